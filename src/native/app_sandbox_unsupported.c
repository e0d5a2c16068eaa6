/* app-sandbox needs Linux seccomp; elsewhere it refuses, so the command never runs unfiltered by mistake. */
#include <stdio.h>

int main(void) {
  fputs("app-sandbox: seccomp filters need Linux; set app.allow_vsock = true to run the command without one\n", stderr);
  return 126;
}
