#pragma once

#include <napi.h>
#include <sys/socket.h>

namespace enclave {

struct SocketAddress {
  sockaddr_storage storage;
  socklen_t length;
};

// Reads {path} (AF_UNIX) or {cid, port} (AF_VSOCK) from a JS object; 0 or -errno
// (-EINVAL for a malformed address, -ENAMETOOLONG for a unix path that does not fit sun_path).
int SocketAddressFromJs(int family, const Napi::Value& value, SocketAddress* out);

// {family: 'unix', path} or {family: 'vsock', cid, port}; abstract unix names are shown with a leading '@'.
Napi::Value SocketAddressToJs(Napi::Env env, const sockaddr_storage& storage, socklen_t length);

}  // namespace enclave
