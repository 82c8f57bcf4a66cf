# The tiers of lib/ only ever look down: every #include of a clipfarm header
# in lib/TIER names a header of TIER or of a tier below it, and no tier uses
# a library it does not declare (the model never sees libpq, media never
# hiredis, nothing in lib/ sees civetweb or czmq). node/ may use everything;
# proto/ only itself. The build enforces the same with per-tier include
# paths (CMakeLists.txt); this test names the offending line.
cd "${CF_SOURCE_DIR:?}" || exit 1
declare -A allowed=(
    [core]="core"
    [model]="core model"
    [media]="core model media"
    [net]="core net"
    [store]="core model store"
    [render]="core model media net render"
)
# System headers a tier must not include (ERE on the header name).
declare -A forbidden=(
    [core]='^(libpq-fe|hiredis/|libav|libsw|curl/|zmq|czmq|civetweb|msgpack)'
    [model]='^(libpq-fe|hiredis/|libav|libsw|curl/|zmq|czmq|civetweb|msgpack|sodium)'
    [media]='^(libpq-fe|hiredis/|curl/|zmq|czmq|civetweb|msgpack)'
    [net]='^(libpq-fe|hiredis/|libav|libsw|zmq|czmq|civetweb|msgpack)'
    [store]='^(libav|libsw|curl/|czmq|civetweb|msgpack)'
    [render]='^(libpq-fe|hiredis/|zmq|czmq|civetweb|msgpack)'
)
declare -A tier_of=()
for dir in lib/*/; do
    tier=$(basename "$dir")
    [[ -n ${allowed[$tier]:-} ]] || { echo "lib/$tier: a tier this test does not know"; exit 1; }
    for h in "$dir"*.h; do tier_of[$(basename "$h")]=$tier; done
done
for h in proto/*.h; do tier_of[$(basename "$h")]=proto; done
status=0
for dir in lib/*/ proto/; do
    tier=$(basename "$dir")
    for f in "$dir"*.[ch]; do
        while IFS= read -r line; do
            header=${line#*[\"<]}
            header=${header%%[\">]*}
            if [[ $line == *'"'* ]]; then
                other=${tier_of[$header]:-}
                if [[ -z $other ]]; then
                    echo "$f: includes \"$header\", which is not in lib/ or proto/"
                    status=1
                elif [[ $tier == proto && $other != proto ]] ||
                    [[ $tier != proto && " ${allowed[$tier]} " != *" $other "* ]]; then
                    echo "$f: lib/$tier includes \"$header\" of $other (allowed: ${allowed[$tier]:-proto})"
                    status=1
                fi
            elif [[ $tier != proto && $header =~ ${forbidden[$tier]} ]]; then
                echo "$f: lib/$tier includes <$header>"
                status=1
            fi
        done < <(grep -E '^#include ["<]' "$f")
    done
done
((status == 0)) && echo "layout: every include looks down the tiers"
exit $status
