"""The DyNetDynamicConv2d op's Python side: spec, reference math, bindings."""
