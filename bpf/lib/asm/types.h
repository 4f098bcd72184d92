/* Debian keeps <asm/*.h> under the multiarch directory, which clang -target bpf does not
 * search; the BPF target has no arch-specific variants, so the generic ones are right. */
#pragma once
#include <asm-generic/types.h>
