{
  "targets": [
    {
      "target_name": "enclave_native",
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags_cc!": ["-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"],
      "conditions": [
        ["OS=='linux'", {
          "sources": [
            "src/bridge/native/addon.cc",
            "src/bridge/native/errno_value.cc",
            "src/bridge/native/socket_address.cc",
            "src/bridge/native/socket_handle.cc",
            "src/bridge/native/nsm_device.cc",
            "src/bridge/native/original_dst.cc",
            "src/bridge/native/net_interface.cc",
            "src/bridge/native/hostname.cc",
            "src/bridge/native/child_reaper.cc",
            "src/bridge/native/process_hardening.cc"
          ]
        }, {
          "sources": ["src/bridge/native/unsupported.cc"]
        }]
      ]
    },
    {
      "target_name": "app_sandbox",
      "type": "executable",
      "conditions": [
        ["OS=='linux'", {
          "sources": ["src/bridge/native/app_sandbox.c"],
          "cflags": ["-Wall", "-Wextra", "-Werror", "-O2"]
        }, {
          "sources": ["src/bridge/native/app_sandbox_unsupported.c"]
        }]
      ]
    }
  ]
}
