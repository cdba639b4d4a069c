# Sourced by the other scripts: installs what a fresh Debian machine lacks and chooses how
# RocksDB is built. See docs/building.md.
#
#   TEOS_ROCKSDB_FROM_SOURCE=1  build RocksDB's C++ from source (~30 min on 2 cores) instead of
#                               linking Debian's librocksdb-dev 7.8.

teos_install_prerequisites() {
    local missing=()
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
    [ -n "$(ls /usr/lib/llvm-*/lib/libclang*.so* 2>/dev/null | head -n1)" ] || missing+=(libclang-dev)
    if [ "${TEOS_ROCKSDB_FROM_SOURCE:-0}" != 1 ] && ! ls /usr/lib/*/librocksdb.so >/dev/null 2>&1; then
        missing+=(librocksdb-dev)
    fi
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing prerequisites: ${missing[*]}" >&2
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    else
        echo "missing prerequisites: ${missing[*]} (install them with your package manager)" >&2
        return 1
    fi
}

teos_choose_rocksdb() {
    if [ "${TEOS_ROCKSDB_FROM_SOURCE:-0}" = 1 ]; then
        unset ROCKSDB_LIB_DIR
        echo "building RocksDB from source (this takes a while)" >&2
        return 0
    fi
    local lib
    lib=$(ls /usr/lib/*/librocksdb.so 2>/dev/null | head -n1)
    if [ -n "$lib" ]; then
        export ROCKSDB_LIB_DIR
        ROCKSDB_LIB_DIR=$(dirname "$lib")
    fi
}

teos_install_prerequisites
teos_choose_rocksdb
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
