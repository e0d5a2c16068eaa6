#include "socket_address.h"

#include <linux/vm_sockets.h>
#include <sys/un.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>

#include "errno_value.h"

namespace enclave {
namespace {

int UnixAddressFromJs(const Napi::Object& object, SocketAddress* out) {
  Napi::Value pathValue = object.Get("path");
  if (!pathValue.IsString()) return -EINVAL;
  std::string path = pathValue.As<Napi::String>().Utf8Value();
  // Only pathname sockets: an empty or NUL-carrying path would silently become an abstract name.
  if (path.empty() || path.find('\0') != std::string::npos) return -EINVAL;
  auto* sun = reinterpret_cast<sockaddr_un*>(&out->storage);
  // The kernel wants room for the terminating NUL of a pathname socket.
  if (path.size() >= sizeof(sun->sun_path)) return -ENAMETOOLONG;
  std::memset(sun, 0, sizeof(*sun));
  sun->sun_family = AF_UNIX;
  std::memcpy(sun->sun_path, path.data(), path.size());
  out->length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return 0;
}

int VsockAddressFromJs(const Napi::Object& object, SocketAddress* out) {
  uint32_t cid;
  uint32_t port;
  if (!ReadUint32(object.Get("cid"), &cid) || !ReadUint32(object.Get("port"), &port)) return -EINVAL;
  auto* svm = reinterpret_cast<sockaddr_vm*>(&out->storage);
  std::memset(svm, 0, sizeof(*svm));
  svm->svm_family = AF_VSOCK;
  svm->svm_cid = cid;
  svm->svm_port = port;
  out->length = sizeof(*svm);
  return 0;
}

// Built with plain Node-API calls whose failures are checked: a terminating worker refuses them,
// and node-addon-api would turn the follow-up calls on the failed object into a fatal error.
Napi::Value AddressObject(Napi::Env env, const char* family,
                          const std::initializer_list<std::pair<const char*, napi_value>>& fields) {
  napi_value object = nullptr;
  napi_value familyValue = nullptr;
  if (napi_create_object(env, &object) != napi_ok ||
      napi_create_string_utf8(env, family, NAPI_AUTO_LENGTH, &familyValue) != napi_ok ||
      napi_set_named_property(env, object, "family", familyValue) != napi_ok) {
    return ErrnoValue(env, ENOMEM);
  }
  for (const auto& field : fields) {
    if (field.second == nullptr || napi_set_named_property(env, object, field.first, field.second) != napi_ok) {
      return ErrnoValue(env, ENOMEM);
    }
  }
  return Napi::Value(env, object);
}

Napi::Value UnixAddressToJs(Napi::Env env, const sockaddr_un& sun, socklen_t length) {
  const size_t offset = offsetof(sockaddr_un, sun_path);
  std::string path;
  if (length > offset) {
    size_t available = length - offset;
    if (available > sizeof(sun.sun_path)) available = sizeof(sun.sun_path);
    if (sun.sun_path[0] == '\0') {
      // Abstract names carry no terminator and may contain NULs; '@' is how ss(8) shows them.
      if (available > 1) path = "@" + std::string(sun.sun_path + 1, available - 1);
    } else {
      path.assign(sun.sun_path, strnlen(sun.sun_path, available));
    }
  }
  napi_value pathValue = nullptr;
  napi_create_string_utf8(env, path.data(), path.size(), &pathValue);
  return AddressObject(env, "unix", {{"path", pathValue}});
}

Napi::Value VsockAddressToJs(Napi::Env env, const sockaddr_vm& svm) {
  napi_value cid = nullptr;
  napi_value port = nullptr;
  napi_create_uint32(env, svm.svm_cid, &cid);
  napi_create_uint32(env, svm.svm_port, &port);
  return AddressObject(env, "vsock", {{"cid", cid}, {"port", port}});
}

}  // namespace

int SocketAddressFromJs(int family, const Napi::Value& value, SocketAddress* out) {
  if (!value.IsObject()) return -EINVAL;
  Napi::Object object = value.As<Napi::Object>();
  std::memset(out, 0, sizeof(*out));
  if (family == AF_UNIX) return UnixAddressFromJs(object, out);
  if (family == AF_VSOCK) return VsockAddressFromJs(object, out);
  return -EAFNOSUPPORT;
}

Napi::Value SocketAddressToJs(Napi::Env env, const sockaddr_storage& storage, socklen_t length) {
  if (storage.ss_family == AF_UNIX) {
    return UnixAddressToJs(env, reinterpret_cast<const sockaddr_un&>(storage), length);
  }
  if (storage.ss_family == AF_VSOCK && length >= sizeof(sockaddr_vm)) {
    return VsockAddressToJs(env, reinterpret_cast<const sockaddr_vm&>(storage));
  }
  return ErrnoValue(env, EAFNOSUPPORT);
}

}  // namespace enclave
