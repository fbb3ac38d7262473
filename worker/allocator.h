// The process-wide allocator setting of every program that runs the model.
#pragma once

#include <malloc.h>

namespace kvtune::worker {

// The runtime allocates and frees tensors of megabytes per operation; by
// default glibc maps and unmaps each one, and the page faults cost more than
// the arithmetic on small models (12x on stories260K's profile, measured
// with bench_profile) and serialize workers sharing a VM. Keeps freed memory
// for reuse instead. Call first thing in main().
inline void keep_freed_memory() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
}

}  // namespace kvtune::worker
