# onnxruntime's C/C++ API headers (MIT, API version 29) for the native onnxruntime op library, from the npm package
# that ships them, checksum-verified; the one place that pins them. Two uses:
#   script:   cmake -DDEST=<folder> -P cmake/onnxruntime_headers.cmake      (what `make ort-headers` runs)
#   included: dynet_fetch_onnxruntime_headers(<folder>)                      (CMakeLists.txt with
#             -DDYNET_FETCH_ONNXRUNTIME_HEADERS=ON, which the wheel build sets)
# The headers land in <folder> (onnxruntime_cxx_api.h and its siblings) only when all of them were extracted:
# they are copied into a temporary folder beside it, which is then renamed into place.
set(DYNET_ORT_NPM_PACKAGE com.github.asus4.onnxruntime)
set(DYNET_ORT_NPM_VERSION 0.4.9)
set(DYNET_ORT_NPM_SHA256 e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d)
set(DYNET_ORT_NPM_HEADERS
  "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers")

function(dynet_fetch_onnxruntime_headers dest)
  if(EXISTS "${dest}/onnxruntime_cxx_api.h")
    return()
  endif()
  set(how "pass -DONNXRUNTIME_INCLUDE_DIR=<the include/ folder of an onnxruntime release> (pip: \
-C cmake.define.ONNXRUNTIME_INCLUDE_DIR=...) to use headers you have")
  find_program(DYNET_NPM npm)
  if(NOT DYNET_NPM)
    message(FATAL_ERROR "dynet: onnxruntime's C/C++ API headers are needed and are fetched with npm "
      "(${DYNET_ORT_NPM_PACKAGE}@${DYNET_ORT_NPM_VERSION}), but npm is not installed: install it (apt-get install "
      "npm), or ${how}")
  endif()
  string(RANDOM LENGTH 8 tag)
  get_filename_component(parent "${dest}" DIRECTORY)
  set(work "${parent}/.onnxruntime-headers-${tag}")
  file(REMOVE_RECURSE "${work}")
  file(MAKE_DIRECTORY "${work}/pack" "${work}/include")
  message(STATUS "dynet: fetching onnxruntime headers (npm ${DYNET_ORT_NPM_PACKAGE}@${DYNET_ORT_NPM_VERSION})")
  execute_process(COMMAND ${DYNET_NPM} pack --loglevel=error "${DYNET_ORT_NPM_PACKAGE}@${DYNET_ORT_NPM_VERSION}"
    WORKING_DIRECTORY "${work}/pack" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(tgz "${work}/pack/${DYNET_ORT_NPM_PACKAGE}-${DYNET_ORT_NPM_VERSION}.tgz")
  if(NOT rc EQUAL 0 OR NOT EXISTS "${tgz}")
    file(REMOVE_RECURSE "${work}")
    message(FATAL_ERROR "dynet: 'npm pack ${DYNET_ORT_NPM_PACKAGE}@${DYNET_ORT_NPM_VERSION}' failed (exit ${rc}): "
      "${err}\nonnxruntime's C/C++ API headers could not be fetched; check the npm registry is reachable, or ${how}")
  endif()
  file(SHA256 "${tgz}" sha)
  if(NOT sha STREQUAL DYNET_ORT_NPM_SHA256)
    file(REMOVE_RECURSE "${work}")
    message(FATAL_ERROR "dynet: ${DYNET_ORT_NPM_PACKAGE}-${DYNET_ORT_NPM_VERSION}.tgz has sha256 ${sha}, expected "
      "${DYNET_ORT_NPM_SHA256}; refusing it; ${how}")
  endif()
  file(ARCHIVE_EXTRACT INPUT "${tgz}" DESTINATION "${work}/pack" PATTERNS "${DYNET_ORT_NPM_HEADERS}/*.h")
  file(GLOB headers "${work}/pack/${DYNET_ORT_NPM_HEADERS}/*.h")
  if(NOT headers OR NOT EXISTS "${work}/pack/${DYNET_ORT_NPM_HEADERS}/onnxruntime_cxx_api.h")
    file(REMOVE_RECURSE "${work}")
    message(FATAL_ERROR "dynet: ${DYNET_ORT_NPM_PACKAGE}-${DYNET_ORT_NPM_VERSION}.tgz has no onnxruntime headers "
      "under ${DYNET_ORT_NPM_HEADERS}; ${how}")
  endif()
  file(COPY ${headers} DESTINATION "${work}/include")
  file(REMOVE_RECURSE "${dest}") # a folder without onnxruntime_cxx_api.h is an unfinished copy
  file(RENAME "${work}/include" "${dest}")
  file(REMOVE_RECURSE "${work}")
  message(STATUS "dynet: onnxruntime headers -> ${dest}")
endfunction()

if(CMAKE_SCRIPT_MODE_FILE AND CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  if(NOT DEST)
    message(FATAL_ERROR "usage: cmake -DDEST=<folder> -P ${CMAKE_CURRENT_LIST_FILE}")
  endif()
  get_filename_component(DEST "${DEST}" ABSOLUTE)
  dynet_fetch_onnxruntime_headers("${DEST}")
endif()
