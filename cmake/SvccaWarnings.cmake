# Warnings and sanitizers for svcca's own targets only; Torch's headers stay system headers.
function(svcca_target_defaults target)
  target_compile_features(${target} PUBLIC cxx_std_17)
  target_compile_options(${target} PRIVATE -Wall -Wextra)
  if(SVCCA_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(SVCCA_SANITIZE)
    # -fno-sanitize=vptr: UBSan's dynamic-type check needs the typeinfo of every polymorphic
    # class it sees, and libtorch does not export some (c10::DynamicType, used by torch::jit).
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-sanitize=vptr
                                             -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
  if(SVCCA_BUILD_FUZZERS)
    # Coverage for libFuzzer's guidance, and ASan so that memory errors are findings; the
    # fuzz executables themselves link -fsanitize=fuzzer (tests/fuzz).
    target_compile_options(${target} PRIVATE -fsanitize=fuzzer-no-link,address
                                             -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address)
  endif()
endfunction()
