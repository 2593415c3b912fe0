# Install headers, libraries and a package config so that consumers can
# find_package(svcca) and link svcca::core (and svcca::ops).
include(CMakePackageConfigHelpers)

set(SVCCA_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/svcca)
set(_svcca_targets svcca_core)
if(TARGET svcca_ops)
  list(APPEND _svcca_targets svcca_ops)
endif()
install(TARGETS ${_svcca_targets} EXPORT svccaTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT svccaTargets NAMESPACE svcca:: DESTINATION ${SVCCA_INSTALL_CMAKEDIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/svccaConfig.cmake.in
  ${PROJECT_BINARY_DIR}/svccaConfig.cmake INSTALL_DESTINATION ${SVCCA_INSTALL_CMAKEDIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/svccaConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/svccaConfig.cmake ${PROJECT_BINARY_DIR}/svccaConfigVersion.cmake
  DESTINATION ${SVCCA_INSTALL_CMAKEDIR})
if(TARGET svcca_ops)
  # The whole package: __init__ imports its sibling modules.
  file(GLOB svcca_python_files ${PROJECT_SOURCE_DIR}/torch_ext/python/svcca/*.py)
  install(FILES ${svcca_python_files} DESTINATION ${CMAKE_INSTALL_LIBDIR}/python/svcca)
  install(TARGETS svcca_ops LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/python/svcca)
endif()
