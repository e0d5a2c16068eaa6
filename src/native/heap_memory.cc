// Giving glibc's free heap pages back to the kernel: an enclave has a fixed amount of memory, and
// neither Node nor glibc returns pages in the middle of the heap on its own.
#include <cerrno>  // first: it defines __GLIBC__ (through features.h)
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "errno_value.h"
#include "exports.h"

namespace enclave {
namespace {

// trimHeap() -> 1 (memory went back to the kernel) | 0 (none to give) | -ENOSYS (not glibc).
// malloc_trim(0) returns every free whole page of every arena, not only the top of the heap: after
// thousands of connections close, their freed buffers sit between live allocations, where glibc's
// own trimming (top of the main heap only) never reaches them.
Napi::Value TrimHeap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#if defined(__GLIBC__)
  return Napi::Number::New(env, ::malloc_trim(0));
#else
  return ErrnoValue(env, ENOSYS);
#endif
}

}  // namespace

void InitHeapMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("trimHeap", Napi::Function::New(env, TrimHeap, "trimHeap"));
}

}  // namespace enclave
