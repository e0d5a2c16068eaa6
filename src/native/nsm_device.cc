// The Nitro Secure Module character device (/dev/nsm): open/close and its one request ioctl.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "errno_value.h"
#include "exports.h"

namespace enclave {
namespace {

// Layout of the Nitro driver's request, as in aws-nitro-enclaves-sdk's nsm driver and the upstream
// uapi <linux/nsm.h> (struct nsm_raw of two {u64 addr, u64 len}): identical on 64-bit Linux.
struct NsmMessage {
  iovec request;
  iovec response;
};
constexpr unsigned long kNsmIoctlRequest = _IOWR(0x0A, 0, NsmMessage);

// The driver answers in at most 0x3000 bytes; the cap only bounds what a caller can make us allocate.
constexpr uint32_t kMaxResponseBytes = 64 * 1024;
constexpr size_t kMaxRequestBytes = 64 * 1024;
constexpr size_t kMaxPathBytes = 4096;

// openDevice(path) -> fd | -errno: O_RDWR|O_CLOEXEC, so the fd never leaks into the customer's process.
Napi::Value OpenDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!ReadString(info[0], kMaxPathBytes, &path)) return ErrnoValue(env, EINVAL);
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  return fd < 0 ? ErrnoValue(env, errno) : Napi::Number::New(env, fd);
}

// closeFd(fd) -> 0 | -errno.
Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ReadFd(info[0], &fd)) return ErrnoValue(env, EBADF);
  return ::close(fd) != 0 ? ErrnoValue(env, errno) : Napi::Number::New(env, 0);
}

// nsmRequest(fd, request, maxResponse) -> Buffer | -errno: one synchronous NSM round trip
// (CBOR request in, CBOR response out); the driver sets response.iov_len to the bytes it wrote.
Napi::Value NsmRequest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint32_t maxResponse;
  if (!ReadFd(info[0], &fd)) return ErrnoValue(env, EBADF);
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    return ErrnoValue(env, EINVAL);
  }
  if (!ReadUint32(info[2], &maxResponse) || maxResponse == 0 || maxResponse > kMaxResponseBytes) {
    return ErrnoValue(env, EINVAL);
  }
  Napi::Uint8Array request = info[1].As<Napi::Uint8Array>();
  if (request.ByteLength() == 0 || request.ByteLength() > kMaxRequestBytes) return ErrnoValue(env, EMSGSIZE);

  std::vector<uint8_t> response(maxResponse);
  NsmMessage message{};
  message.request.iov_base = request.Data();
  message.request.iov_len = request.ByteLength();
  message.response.iov_base = response.data();
  message.response.iov_len = response.size();
  int status;
  do {
    status = ::ioctl(fd, kNsmIoctlRequest, &message);
  } while (status < 0 && errno == EINTR);
  if (status < 0) return ErrnoValue(env, errno);
  // Never trust a length beyond the buffer we handed the driver.
  if (message.response.iov_len > response.size()) return ErrnoValue(env, EMSGSIZE);
  return Napi::Buffer<uint8_t>::Copy(env, response.data(), message.response.iov_len);
}

}  // namespace

void InitNsmDevice(Napi::Env env, Napi::Object exports) {
  exports.Set("openDevice", Napi::Function::New(env, OpenDevice, "openDevice"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("nsmRequest", Napi::Function::New(env, NsmRequest, "nsmRequest"));
}

}  // namespace enclave
