# Sourced by the other scripts: installs what a fresh Debian machine lacks and chooses how
# RocksDB is built. See docs/building.md.
#
#   TEOS_ROCKSDB_FROM_SOURCE=1  build RocksDB's C++ from source (~30 min on 2 cores) instead of
#                               linking Debian's librocksdb-dev 7.8.
#   TEOS_SYSROOT=<dir>          look for the files below under <dir> instead of / (tests only:
#                               scripts/test-env.sh checks the detection against scratch trees).
#
# Each check looks for the very file a build step loads, not for a package near it: a machine
# with `libclang-cpp14` (libclang-cpp.so.14) but no `libclang.so` fails bindgen all the same.

# The libclang that bindgen (clang-sys) loads: libclang.so, libclang-<version>.so or
# libclang.so.<version>, in LLVM's or the multiarch library directory. Never libclang-cpp.
teos_find_libclang() {
    local root="${TEOS_SYSROOT:-}" dir file
    if [ -n "${LIBCLANG_PATH:-}" ] && [ -z "$root" ]; then
        set -- "$LIBCLANG_PATH"
    else
        set -- "$root"/usr/lib/llvm-*/lib "$root"/usr/lib/*-linux-gnu "$root"/usr/lib "$root"/usr/local/lib
    fi
    for dir in "$@"; do
        for file in "$dir"/libclang.so "$dir"/libclang.so.* "$dir"/libclang-[0-9]*.so "$dir"/libclang-[0-9]*.so.*; do
            [ -e "$file" ] && { echo "$file"; return 0; }
        done
    done
    return 1
}

# The RocksDB shared library that ROCKSDB_LIB_DIR will point at.
teos_find_librocksdb() {
    local root="${TEOS_SYSROOT:-}" file
    for file in "$root"/usr/lib/*-linux-gnu/librocksdb.so "$root"/usr/lib/librocksdb.so; do
        [ -e "$file" ] && { echo "$file"; return 0; }
    done
    return 1
}

# protoc, which prost/tonic's build scripts run.
teos_find_protoc() {
    local root="${TEOS_SYSROOT:-}"
    if [ -n "$root" ]; then
        [ -x "$root/usr/bin/protoc" ] && echo "$root/usr/bin/protoc"
    else
        command -v protoc
    fi
}

# tor, which the onion service tests run (offline) as a real daemon.
teos_find_tor() {
    local root="${TEOS_SYSROOT:-}" file
    if [ -z "$root" ] && command -v tor >/dev/null 2>&1; then
        command -v tor
        return 0
    fi
    for file in "$root"/usr/bin/tor "$root"/usr/sbin/tor; do
        [ -x "$file" ] && { echo "$file"; return 0; }
    done
    return 1
}

# The packages missing, one per line, as Debian names them.
teos_missing_packages() {
    teos_find_protoc >/dev/null || echo protobuf-compiler
    teos_find_libclang >/dev/null || echo libclang-dev
    if [ "${TEOS_ROCKSDB_FROM_SOURCE:-0}" != 1 ]; then
        teos_find_librocksdb >/dev/null || echo librocksdb-dev
    fi
    if [ -n "${TEOS_SYSROOT:-}" ]; then
        [ -x "$TEOS_SYSROOT/usr/bin/curl" ] || echo curl
    else
        command -v curl >/dev/null 2>&1 || echo curl
    fi
    teos_find_tor >/dev/null || echo tor
}

teos_install_prerequisites() {
    local missing
    mapfile -t missing < <(teos_missing_packages)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing prerequisites: ${missing[*]}" >&2
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
        mapfile -t missing < <(teos_missing_packages)
        [ ${#missing[@]} -eq 0 ] && return 0
        echo "still missing after apt-get install: ${missing[*]}" >&2
        return 1
    fi
    echo "missing prerequisites (Debian package names; install them with your package manager):" >&2
    local package
    for package in "${missing[@]}"; do
        case "$package" in
            protobuf-compiler) echo "  protobuf-compiler: the protoc compiler (or set PROTOC to one)" >&2 ;;
            libclang-dev) echo "  libclang-dev: libclang.so for bindgen (or set LIBCLANG_PATH to its directory)" >&2 ;;
            librocksdb-dev) echo "  librocksdb-dev: librocksdb.so 7.8 (or TEOS_ROCKSDB_FROM_SOURCE=1, docs/building.md)" >&2 ;;
            curl) echo "  curl: used by scripts/run-tower and scripts/walkthrough" >&2 ;;
            tor) echo "  tor: the onion service tests run it offline (or set TOR_EXE to a tor binary)" >&2 ;;
        esac
    done
    return 1
}

teos_choose_rocksdb() {
    if [ "${TEOS_ROCKSDB_FROM_SOURCE:-0}" = 1 ]; then
        unset ROCKSDB_LIB_DIR
        echo "building RocksDB from source (this takes a while)" >&2
        return 0
    fi
    local lib
    lib=$(teos_find_librocksdb) || return 0
    export ROCKSDB_LIB_DIR
    ROCKSDB_LIB_DIR=$(dirname "$lib")
}

if [ -z "${TEOS_ENV_FUNCTIONS_ONLY:-}" ]; then
    teos_install_prerequisites || return 1 2>/dev/null || exit 1
    teos_choose_rocksdb
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
fi
