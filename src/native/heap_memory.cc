// Giving glibc's free heap pages back to the kernel: an enclave has a fixed amount of memory, and
// neither Node nor glibc returns pages in the middle of the heap on its own.
#include <cerrno>  // first: it defines __GLIBC__ (through features.h)
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <v8.h>

#include "errno_value.h"
#include "exports.h"

namespace enclave {
namespace {

// trimHeap(collect) -> 1 (memory went back to the kernel) | 0 (none to give) | -ENOSYS (not glibc).
// With collect, V8 first runs a full, memory-reducing collection (what it does on a low-memory
// notification): closed sockets' JS objects, and the native state their finalizers free, go now,
// not whenever the heap next fills, and V8 hands back its emptied pages.
// malloc_trim(0) then returns every free whole page of every arena, not only the top of the heap:
// after thousands of connections close, their freed buffers sit between live allocations, where
// glibc's own trimming (top of the main heap only) never reaches them.
Napi::Value TrimHeap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info[0].IsBoolean() && info[0].As<Napi::Boolean>().Value()) {
    v8::Isolate* isolate = v8::Isolate::GetCurrent();
    if (isolate != nullptr) isolate->LowMemoryNotification();
  }
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
