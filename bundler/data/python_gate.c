/* The runtime stub's libpython as PyInstaller's bootloader sees it (bundler/stub_gate.py).

   The bootloader dlopens this library where it expects libpython. Its constructor compares the machine's
   glibc with the floor of the real libpython (stored beside it as GATE_REAL_LIBRARY): older, it prints
   one `error:` line naming what the executable needs and exits 2 before the real library is touched;
   otherwise it loads the real library (RTLD_GLOBAL, so extension modules bind to it) and every function
   the bootloader asks for is a GNU indirect function whose resolver hands back the real one.

   This file needs only the oldest glibc of its architecture (GATE_GLIBC_BASE): the dl* functions are
   bound to that version, and the bootloader itself needs no more (GLIBC_2.14 / GLIBC_2.17).
   bundler/stub_gate.py prepends the GATE_* constants and appends one GATE_FORWARD line per function. */
#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <string.h>
#include <unistd.h>

__asm__(".symver dlopen,dlopen@" GATE_GLIBC_BASE);
__asm__(".symver dlsym,dlsym@" GATE_GLIBC_BASE);
__asm__(".symver dlerror,dlerror@" GATE_GLIBC_BASE);

static void *real_library;

static void say(const char *text) {
    ssize_t ignored = write(2, text, strlen(text));
    (void)ignored;
}

/* "2.36" -> 2036; anything unreadable -> 0 (treated as too old). */
static int version_number(const char *text) {
    int major = 0, minor = 0;
    while (*text >= '0' && *text <= '9') major = major * 10 + (*text++ - '0');
    if (*text++ != '.') return 0;
    while (*text >= '0' && *text <= '9') minor = minor * 10 + (*text++ - '0');
    return major * 1000 + minor;
}

__attribute__((constructor)) static void gate(int argc, char **argv) {
    const char *have = gnu_get_libc_version();
    if (version_number(have) < version_number(GATE_GLIBC_FLOOR)) {
        say("error: ");
        say(argc > 0 && argv && argv[0] ? argv[0] : "this executable");
        say(": needs " GATE_ARCH " Linux with glibc " GATE_GLIBC_FLOOR " or newer; this machine has glibc ");
        say(have);
        say("\n");
        _exit(2);
    }
    /* $ORIGIN: the folder this library was unpacked to */
    real_library = dlopen("$ORIGIN/" GATE_REAL_LIBRARY, RTLD_NOW | RTLD_GLOBAL);
    if (!real_library) {
        const char *why = dlerror();
        say("error: cannot load the Python library: ");
        say(why ? why : GATE_REAL_LIBRARY);
        say("\n");
        _exit(2);
    }
}

/* A function the real library lacks resolves to NULL: the bootloader sees it as absent, as it would. */
#define GATE_FORWARD(name) \
    static void *resolve_##name(void) { return dlsym(real_library, #name); } \
    void name(void) __attribute__((ifunc("resolve_" #name)));
