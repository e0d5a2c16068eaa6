// Module entry point of enclave_native: AF_VSOCK/AF_UNIX stream sockets plus the few Linux
// syscalls the runtime needs and Node does not expose.
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <sys/socket.h>

#include <cerrno>

#include "addon_data.h"
#include "errno_value.h"
#include "exports.h"
#include "socket_handle.h"

namespace enclave {
namespace {

// socket(family) -> fd | -errno: a non-blocking, close-on-exec stream socket. EAFNOSUPPORT when
// the kernel has no vsock support.
Napi::Value CreateSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) return ErrnoValue(env, EAFNOSUPPORT);
  int family = info[0].As<Napi::Number>().Int32Value();
  if (family != AF_UNIX && family != AF_VSOCK) return ErrnoValue(env, EAFNOSUPPORT);
  int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  return fd < 0 ? ErrnoValue(env, errno) : Napi::Number::New(env, fd);
}

// dupFd(fd) -> new fd | -errno: a close-on-exec duplicate of a socket fd. Ingress workers each
// poll their own duplicate of the one listening socket, so each closes its own without closing
// the socket under the others.
Napi::Value DupFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ReadFd(info[0], &fd)) return ErrnoValue(env, EBADF);
  int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  return copy < 0 ? ErrnoValue(env, errno) : Napi::Number::New(env, copy);
}

}  // namespace
}  // namespace enclave

static Napi::Object InitEnclaveNative(Napi::Env env, Napi::Object exports) {
  using namespace enclave;
  env.SetInstanceData(new AddonData());
  exports.Set("Handle", SocketHandle::Define(env));
  exports.Set("socket", Napi::Function::New(env, CreateSocket, "socket"));
  exports.Set("dupFd", Napi::Function::New(env, DupFd, "dupFd"));
  exports.Set("AF_UNIX", Napi::Number::New(env, AF_UNIX));
  exports.Set("AF_VSOCK", Napi::Number::New(env, AF_VSOCK));
  InitNsmDevice(env, exports);
  InitOriginalDst(env, exports);
  InitNetInterface(env, exports);
  InitHostname(env, exports);
  InitChildReaper(env, exports);
  InitProcessHardening(env, exports);
  InitHeapMemory(env, exports);
  InitTlsRelay(env, exports);
  return exports;
}

NODE_API_MODULE(enclave_native, InitEnclaveNative)
