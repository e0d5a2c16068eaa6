/*
 * The handshake rows' load generator: full TLS 1.3 handshakes, no resumption, from CLIENTS
 * connections at once in one thread. Written in C because the Node client it replaces spent about
 * 2 ms of CPU per handshake on the same two cores as the server it measured, so the rates said more
 * about the client than about the server (README, Performance: "Handshakes/s").
 *
 *   tls-handshaker HOST PORT CLIENTS SECONDS SERVERNAME [nonce]
 *
 * Each connection: connect, handshake with SNI SERVERNAME (with "nonce": a fresh random
 * <32 hex>.attest.SERVERNAME each time, so every handshake asks for a new nonce certificate), then
 * close_notify and FIN, and wait for the server to close too, as tls.connect() + end() did. The
 * certificate is not verified. Prints one JSON line: {"handshakes":N,"seconds":S,"errors":E,"resumed":R}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* A connection not through its handshake in this time counts as failed (the Node client only dropped it). */
#define CONNECTION_TIMEOUT_S 10.0
/* As the Node client: a server failing this often ends the run. */
#define MAX_ERRORS 100
#define MAX_CLIENTS 1024

enum phase { CONNECTING, HANDSHAKING, CLOSING };

struct client {
  int fd;
  SSL *ssl;
  enum phase phase;
  double started;
};

static SSL_CTX *ctx;
static int epfd;
static struct sockaddr_in target;
static const char *server_name;
static int nonce_mode;
static long handshakes, errors, resumed;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void watch(struct client *c, int op, unsigned events) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  if (epoll_ctl(epfd, op, c->fd, &ev) != 0) {
    perror("epoll_ctl");
    exit(1);
  }
}

static void finish(struct client *c, int failed) {
  if (failed) errors++;
  if (c->ssl) SSL_free(c->ssl);
  c->ssl = NULL;
  if (c->fd >= 0) close(c->fd); /* also leaves the epoll set */
  c->fd = -1;
}

static void start(struct client *c) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) {
    perror("socket");
    exit(1);
  }
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->started = now();
  c->phase = CONNECTING;
  if (connect(c->fd, (struct sockaddr *)&target, sizeof target) != 0 && errno != EINPROGRESS) {
    finish(c, 1);
    return;
  }
  watch(c, EPOLL_CTL_ADD, EPOLLOUT);
}

/* Waits for what OpenSSL asked for; returns 0 to go on, -1 when the connection failed. */
static int wait_for(struct client *c, int rc) {
  switch (SSL_get_error(c->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
      watch(c, EPOLL_CTL_MOD, EPOLLIN);
      return 0;
    case SSL_ERROR_WANT_WRITE:
      watch(c, EPOLL_CTL_MOD, EPOLLOUT);
      return 0;
    default:
      ERR_clear_error();
      return -1;
  }
}

static void step(struct client *c) {
  if (c->phase == CONNECTING) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) return finish(c, 1);
    c->ssl = SSL_new(ctx);
    if (!c->ssl) return finish(c, 1);
    char name[300];
    if (nonce_mode) {
      unsigned char nonce[16];
      if (RAND_bytes(nonce, sizeof nonce) != 1) return finish(c, 1);
      int at = 0;
      for (size_t i = 0; i < sizeof nonce; i++) at += snprintf(name + at, sizeof name - at, "%02x", nonce[i]);
      snprintf(name + at, sizeof name - at, ".attest.%s", server_name);
    } else {
      snprintf(name, sizeof name, "%s", server_name);
    }
    if (SSL_set_tlsext_host_name(c->ssl, name) != 1) {
      ERR_clear_error();
      return finish(c, 1);
    }
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    c->phase = HANDSHAKING;
  }
  if (c->phase == HANDSHAKING) {
    ERR_clear_error(); /* SSL_get_error reads the queue: nothing from another connection may be left in it */
    int rc = SSL_do_handshake(c->ssl);
    if (rc != 1) {
      if (wait_for(c, rc) != 0) finish(c, 1);
      return;
    }
    handshakes++;
    if (SSL_session_reused(c->ssl)) resumed++;
    /* close_notify and FIN, as socket.end(); then read until the server closes too. */
    SSL_shutdown(c->ssl);
    ERR_clear_error();
    shutdown(c->fd, SHUT_WR);
    c->phase = CLOSING;
    watch(c, EPOLL_CTL_MOD, EPOLLIN);
  }
  if (c->phase == CLOSING) {
    char sink[4096];
    for (;;) {
      ssize_t n = read(c->fd, sink, sizeof sink); /* session tickets, close_notify: not decrypted */
      if (n > 0) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (n < 0 && errno == EINTR) continue;
      return finish(c, n < 0 && errno != ECONNRESET);
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 6 || argc > 7 || (argc == 7 && strcmp(argv[6], "nonce") != 0)) {
    fprintf(stderr, "usage: tls-handshaker HOST PORT CLIENTS SECONDS SERVERNAME [nonce]\n");
    return 2;
  }
  memset(&target, 0, sizeof target);
  target.sin_family = AF_INET;
  if (inet_pton(AF_INET, argv[1], &target.sin_addr) != 1) {
    fprintf(stderr, "tls-handshaker: HOST must be an IPv4 address, not %s\n", argv[1]);
    return 2;
  }
  char *end_port, *end_clients, *end_seconds;
  long port = strtol(argv[2], &end_port, 10), clients = strtol(argv[3], &end_clients, 10);
  double seconds = strtod(argv[4], &end_seconds);
  if (*argv[2] == '\0' || *end_port != '\0' || port < 1 || port > 65535 || *argv[3] == '\0' || *end_clients != '\0' ||
      clients < 1 || clients > MAX_CLIENTS || *argv[4] == '\0' || *end_seconds != '\0' || !isfinite(seconds) ||
      !(seconds > 0) || seconds > 3600) {
    fprintf(stderr, "tls-handshaker: PORT 1-65535, CLIENTS 1-%d, SECONDS > 0 and at most 3600\n", MAX_CLIENTS);
    return 2;
  }
  /* A name this long plus "<32 hex>.attest." would not fit SNI's 255 bytes. */
  if (strlen(argv[5]) == 0 || strlen(argv[5]) > 200) {
    fprintf(stderr, "tls-handshaker: SERVERNAME must be 1 to 200 characters\n");
    return 2;
  }
  /* A server that resets a connection must count as an error, not kill the client on a write. */
  signal(SIGPIPE, SIG_IGN);
  target.sin_port = htons((unsigned short)port);
  server_name = argv[5];
  nonce_mode = argc == 7;

  ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) return 1;
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256"); /* the suite every subject serves (bench/subject.ts) */
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);

  epfd = epoll_create1(EPOLL_CLOEXEC);
  struct client *all = calloc((size_t)clients, sizeof *all);
  if (epfd < 0 || !all) return 1;
  double begun = now(), stop_at = begun + seconds;
  for (long i = 0; i < clients; i++) start(&all[i]);
  struct epoll_event events[64];
  long open = clients;
  while (open > 0) {
    int n = epoll_wait(epfd, events, 64, 100);
    if (n < 0 && errno != EINTR) {
      perror("epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) step(events[i].data.ptr);
    double t = now();
    open = 0;
    for (long i = 0; i < clients; i++) {
      struct client *c = &all[i];
      if (c->fd >= 0 && t - c->started > CONNECTION_TIMEOUT_S) finish(c, c->phase != CLOSING);
      if (c->fd < 0 && t < stop_at && errors < MAX_ERRORS) start(c);
      if (c->fd >= 0) open++;
    }
  }
  printf("{\"handshakes\":%ld,\"seconds\":%.6f,\"errors\":%ld,\"resumed\":%ld}\n", handshakes, now() - begun, errors,
         resumed);
  return 0;
}
