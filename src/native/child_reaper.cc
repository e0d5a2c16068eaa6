// Reaping orphaned processes when the runtime is PID 1 (or a child subreaper), without stealing
// the exit status of any child that libuv spawned and is waiting for.
//
// libuv reaps only its own children, each with waitpid(pid). A plain waitpid(-1) loop here could
// take one of those statuses first, and Node would never see that child exit. So each round peeks
// with waitid(P_ALL, WNOWAIT), which leaves the zombie in place, and reaps it only when its pid is
// not a live uv_process_t of this thread's loop. When the first waitable child is libuv's, the
// round stops: libuv reaps it on the same SIGCHLD, and the caller sweeps again afterwards.
#include <sys/prctl.h>
#include <sys/wait.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "errno_value.h"
#include "exports.h"

namespace enclave {
namespace {

// A fork bomb's worth of zombies cannot keep one call (and the event loop) busy for long.
constexpr int kMaxReapsPerCall = 4096;

void CollectProcessPid(uv_handle_t* handle, void* arg) {
  if (handle->type != UV_PROCESS) return;
  static_cast<std::vector<int>*>(arg)->push_back(reinterpret_cast<uv_process_t*>(handle)->pid);
}

// reapOrphans() -> { reaped: [{ pid, code, signal }], waitingOn: pid | 0 } | -errno.
// waitingOn is the libuv child that stopped the round (0 when nothing is left to reap).
Napi::Value ReapOrphans(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) return ErrnoValue(env, EINVAL);
  std::vector<int> ours;
  uv_walk(loop, CollectProcessPid, &ours);

  Napi::Array reaped = Napi::Array::New(env);
  int waitingOn = 0;
  for (int count = 0; count < kMaxReapsPerCall;) {
    siginfo_t peek{};
    if (::waitid(P_ALL, 0, &peek, WEXITED | WNOHANG | WNOWAIT) != 0) {
      if (errno == EINTR) continue;
      if (errno == ECHILD) break;
      return ErrnoValue(env, errno);
    }
    if (peek.si_pid == 0) break;
    if (std::find(ours.begin(), ours.end(), peek.si_pid) != ours.end()) {
      waitingOn = peek.si_pid;
      break;
    }
    siginfo_t done{};
    if (::waitid(P_PID, static_cast<id_t>(peek.si_pid), &done, WEXITED | WNOHANG) != 0) {
      if (errno == EINTR) continue;
      return ErrnoValue(env, errno);
    }
    Napi::Object entry = Napi::Object::New(env);
    entry.Set("pid", Napi::Number::New(env, done.si_pid));
    bool signalled = done.si_code == CLD_KILLED || done.si_code == CLD_DUMPED;
    entry.Set("code", signalled ? env.Null() : Napi::Number::New(env, done.si_status));
    entry.Set("signal", signalled ? Napi::Number::New(env, done.si_status) : env.Null());
    reaped.Set(static_cast<uint32_t>(count++), entry);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("reaped", reaped);
  result.Set("waitingOn", Napi::Number::New(env, waitingOn));
  return result;
}

// setChildSubreaper() -> 0 | -errno: orphans of our descendants are re-parented to us instead of
// PID 1, so a runtime that is not PID 1 can still reap them (prctl PR_SET_CHILD_SUBREAPER).
Napi::Value SetChildSubreaper(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) return ErrnoValue(env, errno);
  return Napi::Number::New(env, 0);
}

}  // namespace

void InitChildReaper(Napi::Env env, Napi::Object exports) {
  exports.Set("reapOrphans", Napi::Function::New(env, ReapOrphans, "reapOrphans"));
  exports.Set("setChildSubreaper", Napi::Function::New(env, SetChildSubreaper, "setChildSubreaper"));
}

}  // namespace enclave
