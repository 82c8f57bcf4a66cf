# S3 sources and destinations against a real S3-compatible server (s3rver,
# installed by tests/run) on loopback, through a relay that cuts one part
# upload: an s3:// clip source, a multipart upload of an output larger than
# the part size (one part cut and retried), a single-PUT upload, wrong
# credentials and a missing bucket. Outputs are fetched back with curl's
# own SigV4 client and compared byte for byte with the node's copy.
source "$CF_TESTS_DIR/lib/testlib.sh"
cf_require_env CF_S3RVER
source "$CF_TESTS_DIR/lib/apinode.sh"
api_setup

declare -a PIDS=()
trap 'rc=$?; kill "${PIDS[@]}" 2>/dev/null; (exit $rc); api_cleanup' EXIT
s3port=$(cf_free_port)
mkdir -p "$API_WORK/s3"
"$CF_S3RVER" -d "$API_WORK/s3" -a 127.0.0.1 -p "$s3port" -s --configure-bucket renders \
    --configure-bucket sources >"$API_WORK/s3rver.log" 2>&1 &
PIDS+=($!)
python3 "$CF_TESTS_DIR/lib/flaky_proxy.py" "$s3port" "partNumber=2&" "$API_WORK/proxy.log" \
    "$API_WORK/proxy.port" &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
    [[ -s $API_WORK/proxy.port ]] && curl -s -o /dev/null "http://127.0.0.1:$s3port/" && break
    sleep 0.1
done
proxy=http://127.0.0.1:$(cat "$API_WORK/proxy.port")
S3=(--aws-sigv4 aws:amz:us-east-1:s3 --user S3RVER:S3RVER -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD')

# A source in S3, put there by curl (not by clipfarm).
api_media "$API_WORK/clip.mp4" 4
curl -sf "${S3[@]}" -T "$API_WORK/clip.mp4" "http://127.0.0.1:$s3port/sources/in/clip%20one.mp4" \
    >/dev/null || fail "could not put the source into s3rver"

# Credentials: the default profile from the environment, a profile with a
# key s3rver does not know, and a secret that must never be logged.
cat >"$API_WORK/credentials" <<'INI'
[default]
aws_access_key_id = IGNORED_FILE_KEY
aws_secret_access_key = IGNORED
[wrong]
aws_access_key_id = NOSUCHKEY
aws_secret_access_key = very-secret-value-42
INI
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER
api_node_start main --s3-endpoint "$proxy" --s3-path-style --s3-part-bytes 65536 \
    --s3-credentials-file "$API_WORK/credentials"
API_KEY=$(api_key s3) || exit 1

submit() { # submit JSON
    api_curl -X POST -H 'Content-Type: application/json' -d "$1" "$API_URL/api/v1/compositions"
}
comp() { # comp SOURCE SECONDS DESTINATION_JSON
    jq -cn --arg s "$1" --argjson d "$3" --argjson e "$2" \
        '{title:"s3",clips:[{source:$s,start:0,end:$e}],output:{width:320,height:180,fps:25,preset:"fast"},destination:$d}'
}

# ---------------------------------------------------------------- multipart
submit "$(comp 's3://sources/in/clip%20one.mp4' 4 '{"s3":{"bucket":"renders","key":"out/big.mp4"}}')"
expect_status 202 "s3 source and destination"
big=$(jq -r .id <<<"$body")
[[ $(api_wait_terminal "$big") == completed ]] || { api_curl "$API_URL/api/v1/compositions/$big"; fail "multipart: $body"; }
api_curl "$API_URL/api/v1/compositions/$big"
[[ $(jq -r .output.s3 <<<"$body") == s3://renders/out/big.mp4 ]] || fail "no S3 location: $body"
size=$(jq -r .output.size_bytes <<<"$body")
((size > 65536 * 2)) || fail "output of $size bytes is not larger than two parts"
curl -sf "${S3[@]}" -o "$API_WORK/big.s3" "http://127.0.0.1:$s3port/renders/out/big.mp4" \
    || fail "the uploaded object cannot be fetched"
curl -sf -H "Authorization: Bearer $API_KEY" -o "$API_WORK/big.local" "$API_URL/api/v1/compositions/$big/output" || fail "download big"
cmp "$API_WORK/big.s3" "$API_WORK/big.local" || fail "the S3 object differs from the output"
grep -q 'POST /renders/out/big.mp4?uploads=' "$API_WORK/proxy.log" || fail "no multipart upload"
parts=$(grep -c 'PUT /renders/out/big.mp4?partNumber=' "$API_WORK/proxy.log")
expected=$(((size + 65535) / 65536))
grep -q '^CUT PUT /renders/out/big.mp4?partNumber=2&' "$API_WORK/proxy.log" \
    || fail "part 2 was not cut: $(cat "$API_WORK/proxy.log")"
((parts == expected + 1)) || fail "$parts part requests for $expected parts (one retry expected)"
grep -q 'part 2: .*retrying' "$API_WORK/main/log" || fail "the retry of part 2 is not logged"
ffprobe -v error -show_entries format=duration -of csv=p=0 "$API_WORK/big.s3" | grep -q '^4\.0' \
    || fail "the S3 object is not the 4 s render"

# ---------------------------------------------------------------- single PUT
submit "$(comp "file://$API_WORK/clip.mp4" 0.2 '{"s3":{"bucket":"renders","key":"small.mp4"}}')"
small=$(jq -r .id <<<"$body")
[[ $(api_wait_terminal "$small") == completed ]] || fail "single PUT did not complete"
grep -q '^PUT /renders/small.mp4 ' "$API_WORK/proxy.log" || fail "small output not one PUT"
curl -sf "${S3[@]}" -o "$API_WORK/small.s3" "http://127.0.0.1:$s3port/renders/small.mp4" || fail "get small"
curl -sf -H "Authorization: Bearer $API_KEY" -o "$API_WORK/small.local" "$API_URL/api/v1/compositions/$small/output" || fail "download small"
cmp "$API_WORK/small.s3" "$API_WORK/small.local" || fail "small object differs"

# ---------------------------------------------------------------- errors
submit "$(comp "file://$API_WORK/clip.mp4" 0.2 '{"s3":{"bucket":"renders","key":"x.mp4","profile":"wrong"}}')"
wrong=$(jq -r .id <<<"$body")
[[ $(api_wait_terminal "$wrong") == failed ]] || fail "wrong credentials did not fail"
api_curl "$API_URL/api/v1/compositions/$wrong"
[[ $(jq -r .error.code <<<"$body") == s3_upload_failed ]] || fail "wrong credentials: $body"
[[ $(jq -r .error.message <<<"$body") == *InvalidAccessKeyId* ]] || fail "no S3 code: $body"
[[ $(jq -r .output <<<"$body") == null ]] || fail "a failed upload still shows an output: $body"
submit "$(comp "file://$API_WORK/clip.mp4" 0.2 '{"s3":{"bucket":"no-such-bucket","key":"x.mp4"}}')"
missing=$(jq -r .id <<<"$body")
[[ $(api_wait_terminal "$missing") == failed ]] || fail "missing bucket did not fail"
api_curl "$API_URL/api/v1/compositions/$missing"
[[ $(jq -r .error.message <<<"$body") == *NoSuchBucket* ]] || fail "missing bucket: $body"
submit "$(comp 's3://sources/nothing-here.mp4' 1 'null' | jq -c 'del(.destination)')"
absent=$(jq -r .id <<<"$body")
[[ $(api_wait_terminal "$absent") == failed ]] || fail "missing source did not fail"
api_curl "$API_URL/api/v1/compositions/$absent"
[[ $(jq -r .error.message <<<"$body") == *NoSuchKey* ]] || fail "missing source: $body"
# Nothing in a composition picks the endpoint or reaches another host.
submit "$(comp "file://$API_WORK/clip.mp4" 0.2 '{"s3":{"bucket":"127.0.0.1","key":"x"}}')"
expect_error 422 invalid_composition "an IP address as bucket name"
submit "$(comp "file://$API_WORK/clip.mp4" 0.2 '{"s3":{"bucket":"evil.com:80/x","key":"x"}}')"
expect_error 422 invalid_composition "a host in the bucket name"
# Secrets never reach a log.
for secret in very-secret-value-42 S3RVER:S3RVER IGNORED; do
    grep -q "$secret" "$API_WORK/main/log" && fail "a credential ($secret) is in the node's log"
done
api_node_stop main

# A node without S3 refuses s3:// at submit, naming the options.
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
api_node_start plain --no-render
submit "$(comp 's3://sources/in/clip.mp4' 1 '{"s3":{"bucket":"renders","key":"y.mp4"}}')"
expect_error 422 invalid_composition "S3 on a node without it"
[[ $(jq -r '[.error.problems[].message] | join(" ")' <<<"$body") == *--s3-endpoint* ]] \
    || fail "the refusal does not name the option: $body"
echo "s3: multipart with a retried part, single PUT, source, errors: ok"
