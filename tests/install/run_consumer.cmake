# Installs the already-built project into WORK_DIR/prefix, then configures, builds and runs a tiny
# consumer project that does find_package(svcca) and links svcca::core.
# Usage: cmake -DSOURCE_DIR=... -DBINARY_DIR=... -DWORK_DIR=... -P run_consumer.cmake
foreach(var SOURCE_DIR BINARY_DIR WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_consumer.cmake: ${var} must be set")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/install/consumer -B ${WORK_DIR}/build
    -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/svcca_consumer)
message(STATUS "consumer output: ${last_output}")
if(NOT last_output MATCHES "consumer ok")
  message(FATAL_ERROR "consumer did not report success: ${last_output}")
endif()
