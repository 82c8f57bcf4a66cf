# Debian packages clipfarm needs, and an installer that adds only what is
# missing. Sourced by tests/run, cluster/demo and the benchmarks.

CF_BUILD_PACKAGES=(
    build-essential cmake pkg-config git ca-certificates
    libzmq3-dev libczmq-dev libpq-dev libhiredis-dev
    libavformat-dev libavcodec-dev libavfilter-dev libavutil-dev libswscale-dev libswresample-dev
    libmsgpack-dev libcurl4-openssl-dev libcivetweb-dev libsodium-dev libjansson-dev
)
CF_RUNTIME_PACKAGES=(postgresql redis-server redis-tools ffmpeg iproute2 procps curl)
CF_TEST_PACKAGES=(libcmocka-dev clang clang-format libclang-rt-dev llvm jq python3 bc openssl time)

# cf_install_s3rver DIR: the S3-compatible test server (npm's s3rver),
# installed into DIR once; prints the path of its command.
cf_install_s3rver() {
    local dir=$1 bin=$1/node_modules/.bin/s3rver
    if [[ ! -x $bin ]]; then
        # Debian's npm unless one is installed another way (its package would
        # conflict with that node).
        command -v npm >/dev/null || cf_install_packages nodejs npm || return 1
        # npm's own CA list does not include the CAs the system trusts (a
        # company's TLS proxy, say): use the system's bundle where there is one.
        local ca=()
        [[ -s /etc/ssl/certs/ca-certificates.crt ]] && ca=(--cafile /etc/ssl/certs/ca-certificates.crt)
        mkdir -p "$dir" \
            && npm install --prefix "$dir" "${ca[@]}" --no-audit --no-fund --loglevel=error \
                s3rver@3.7.1 \
                >"$dir/npm.log" 2>&1 \
            || { cat "$dir/npm.log" >&2; echo "npm could not install s3rver" >&2; return 1; }
    fi
    echo "$bin"
}

# cf_install_packages PKG...: installs the packages that are not installed yet.
cf_install_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if [[ $(id -u) != 0 ]]; then
        echo "missing Debian packages: ${missing[*]}" >&2
        echo "run as root (or: sudo apt-get install ${missing[*]})" >&2
        return 1
    fi
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Debian's postgresql package would start a cluster of its own through
    # invoke-rc.d; we run private servers, so keep package scripts from
    # starting services.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    apt-get update -q >/dev/null \
        && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    local rc=$?
    ((created_policy)) && rm -f "$policy"
    if ((rc != 0)); then
        echo "apt-get install failed for: ${missing[*]}" >&2
        return 1
    fi
}
