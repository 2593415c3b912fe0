# Installs the already-built project into WORK_DIR/prefix, then configures, builds and runs a tiny
# consumer project that does find_package(svcca) and links svcca::core. With PYTHON and
# PYTHON_DIR (the installed package's parent, relative to the prefix), also imports the installed
# Python package and runs one op through it.
# Usage: cmake -DSOURCE_DIR=... -DBINARY_DIR=... -DWORK_DIR=... [-DPYTHON=... -DPYTHON_DIR=...]
#        -P run_consumer.cmake
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

if(DEFINED PYTHON AND DEFINED PYTHON_DIR)
  run(${CMAKE_COMMAND} -E env --unset=SVCCA_OPS_LIBRARY PYTHONPATH=${WORK_DIR}/prefix/${PYTHON_DIR}
      ${PYTHON} -c "import torch, svcca, svcca.capture, svcca.distributed; \
assert svcca.library_path.startswith('${WORK_DIR}/prefix'), svcca.library_path; \
x = torch.randn(50, 3, dtype=torch.float64); \
assert abs(svcca.linear_cka(x, x).item() - 1.0) < 1e-12; print('python ok')")
  message(STATUS "installed Python package: ${last_output}")
endif()
