# sparseforge_warnings: an INTERFACE target carrying our warning flags, linked PRIVATE.
add_library(sparseforge_warnings INTERFACE)
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(sparseforge_warnings INTERFACE -Wall -Wextra -Wpedantic -Wshadow
                         -Wnon-virtual-dtor -Wno-unknown-pragmas)
  if(SF_WERROR)
    target_compile_options(sparseforge_warnings INTERFACE -Werror)
  endif()
elseif(MSVC)
  target_compile_options(sparseforge_warnings INTERFACE /W4)
endif()
