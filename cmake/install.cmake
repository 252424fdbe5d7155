# Install rules and the exported package: a downstream project does
#   find_package(mla_decode REQUIRED)
#   target_link_libraries(engine PRIVATE mla::mla_decode)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS mla_decode EXPORT mla_decodeTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/mla DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET mla-decode-cli)
  install(TARGETS mla-decode-cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

set(MLA_CONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/mla_decode)
install(EXPORT mla_decodeTargets NAMESPACE mla:: DESTINATION ${MLA_CONFIG_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/mla_decodeConfig.cmake.in
  ${PROJECT_BINARY_DIR}/mla_decodeConfig.cmake INSTALL_DESTINATION ${MLA_CONFIG_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mla_decodeConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/mla_decodeConfig.cmake
              ${PROJECT_BINARY_DIR}/mla_decodeConfigVersion.cmake
        DESTINATION ${MLA_CONFIG_DIR})
