#!/usr/bin/env bash
# Smoke test of the OIDC test server (tests/oidc/server.mjs) with curl.
# Usage: bash tests/oidc/smoke.sh      (runs `npm ci` first if node_modules is missing)
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -d "$DIR/node_modules/oidc-provider" ] || npm ci --prefix "$DIR" --no-audit --no-fund >&2

LOG="$(mktemp)"
PASS=0
fail() { echo "FAIL: $*" >&2; echo "--- server log ---" >&2; cat "$LOG" >&2; exit 1; }
ok() { PASS=$((PASS + 1)); echo "ok - $*"; }
# jget KEY: print a top-level field of the JSON on stdin ("" if absent; objects as JSON).
jget() {
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=JSON.parse(s)[process.argv[1]];
    process.stdout.write(v===undefined?"":typeof v==="object"?JSON.stringify(v):String(v))})' "$1"
}

# Start the server as a coprocess: we hold its stdin (closing it stops the server) and stdout.
coproc SRV { exec node "$DIR/server.mjs" 2>"$LOG"; }
SERVER_PID=$SRV_PID  # bash unsets SRV_PID when the coprocess exits
cleanup() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; rm -f "$LOG"; }
trap cleanup EXIT

read -r -t 20 LINE <&"${SRV[0]}" || fail "server printed no issuer line"
ISS="$(jget issuer <<<"$LINE")"
PORT="$(jget port <<<"$LINE")"
[ "$LINE" = "{\"issuer\":\"http://127.0.0.1:$PORT\",\"port\":$PORT}" ] || fail "bad issuer line: $LINE"
ok "issuer line $LINE"

C=(curl -sS --max-time 10)

# Discovery
DISC="$("${C[@]}" "$ISS/.well-known/openid-configuration")"
[ "$(jget issuer <<<"$DISC")" = "$ISS" ] || fail "discovery issuer"
[ "$(jget token_endpoint <<<"$DISC")" = "$ISS/token" ] || fail "token_endpoint"
[ "$(jget introspection_endpoint <<<"$DISC")" = "$ISS/token/introspection" ] || fail "introspection_endpoint"
[ "$(jget revocation_endpoint <<<"$DISC")" = "$ISS/token/revocation" ] || fail "revocation_endpoint"
ok "discovery"

# client_credentials: Basic auth and form post
R="$("${C[@]}" -u cc-basic:cc-basic-secret -d grant_type=client_credentials -d 'scope=read write' "$ISS/token")"
AT="$(jget access_token <<<"$R")"
[ -n "$AT" ] && [ "$(jget expires_in <<<"$R")" = 3600 ] && [ "$(jget token_type <<<"$R")" = Bearer ] \
  && [ "$(jget scope <<<"$R")" = "read write" ] || fail "cc-basic token: $R"
ok "client_credentials cc-basic (basic)"
R="$("${C[@]}" -d grant_type=client_credentials -d client_id=cc-post -d client_secret=cc-post-secret -d scope=admin "$ISS/token")"
[ -n "$(jget access_token <<<"$R")" ] && [ "$(jget scope <<<"$R")" = admin ] || fail "cc-post token: $R"
ok "client_credentials cc-post (post)"
R="$("${C[@]}" -u cc-basic:wrong -d grant_type=client_credentials "$ISS/token")"
[ "$(jget error <<<"$R")" = invalid_client ] || fail "bad secret: $R"
ok "wrong secret -> invalid_client"

# Introspection (by another client), revocation (by the owner), introspection again
R="$("${C[@]}" -u rt-client:rt-secret -d "token=$AT" "$ISS/token/introspection")"
[ "$(jget active <<<"$R")" = true ] && [ "$(jget client_id <<<"$R")" = cc-basic ] || fail "introspect: $R"
ok "introspection active"
CODE="$("${C[@]}" -o /dev/null -w '%{http_code}' -u cc-basic:cc-basic-secret -d "token=$AT" "$ISS/token/revocation")"
[ "$CODE" = 200 ] || fail "revocation status $CODE"
R="$("${C[@]}" -d client_id=cc-post -d client_secret=cc-post-secret -d "token=$AT" "$ISS/token/introspection")"
[ "$(jget active <<<"$R")" = false ] || fail "introspect after revoke: $R"
ok "revocation -> inactive"

# Minted refresh token: refresh, rotation, reuse -> invalid_grant
R="$("${C[@]}" -X POST -H 'content-type: application/json' \
  -d '{"client_id":"rt-client","scope":"openid offline_access read"}' "$ISS/test/mint-refresh-token")"
RT1="$(jget refresh_token <<<"$R")"
[ -n "$RT1" ] || fail "mint: $R"
R="$("${C[@]}" -u rt-client:rt-secret -d grant_type=refresh_token --data-urlencode "refresh_token=$RT1" "$ISS/token")"
RT2="$(jget refresh_token <<<"$R")"
[ -n "$(jget access_token <<<"$R")" ] && [ "$(jget expires_in <<<"$R")" = 3600 ] || fail "refresh: $R"
[ -n "$RT2" ] && [ "$RT2" != "$RT1" ] || fail "no rotation: $R"
ok "refresh of minted token rotates"
R="$("${C[@]}" -u rt-client:rt-secret -d grant_type=refresh_token --data-urlencode "refresh_token=$RT2" "$ISS/token")"
RT3="$(jget refresh_token <<<"$R")"
[ -n "$RT3" ] && [ "$RT3" != "$RT2" ] || fail "second rotation: $R"
ok "second refresh rotates again"
R="$("${C[@]}" -u rt-client:rt-secret -d grant_type=refresh_token --data-urlencode "refresh_token=$RT1" "$ISS/token")"
[ "$(jget error <<<"$R")" = invalid_grant ] || fail "reuse: $R"
ok "reused refresh token -> invalid_grant"

# Authorization code + PKCE through the dev interactions (login, then consent), cookie jar kept.
JAR="$(mktemp)"
REDIR=http://127.0.0.1:8080/oauth/callback
VERIFIER="$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
CHALLENGE="$(printf %s "$VERIFIER" | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=\n')"
# location ARGS...: perform a request that must answer 303 and print its Location header.
location() {
  local h
  h="$("${C[@]}" -o /dev/null -D - -c "$JAR" -b "$JAR" "$@")"
  grep -q '^HTTP/1.1 303' <<<"$h" || fail "expected 303 from $*: $h"
  grep -i '^location:' <<<"$h" | tr -d '\r' | cut -d' ' -f2
}
L="$(location -G "$ISS/auth" --data-urlencode client_id=rt-client --data-urlencode response_type=code \
  --data-urlencode "redirect_uri=$REDIR" --data-urlencode 'scope=openid offline_access read' \
  --data-urlencode state=st8 --data-urlencode "code_challenge=$CHALLENGE" \
  --data-urlencode code_challenge_method=S256 --data-urlencode prompt=consent)"
[[ "$L" == /interaction/* ]] || fail "auth -> $L"
L="$(location -d prompt=login -d login=test-user -d password=x "$ISS$L")"   # -> $ISS/auth/UID
L="$(location "$L")"                                                        # -> /interaction/UID2
"${C[@]}" -c "$JAR" -b "$JAR" "$ISS$L" | grep -q 'name="prompt" value="consent"' || fail "no consent form"
L="$(location -d prompt=consent "$ISS$L")"                                  # -> $ISS/auth/UID2
L="$(location "$L")"                                                        # -> redirect_uri?code=
[[ "$L" == "$REDIR?code="*"&state=st8&"* ]] || fail "callback: $L"
AUTH_CODE="$(sed -n 's/.*[?&]code=\([^&]*\).*/\1/p' <<<"$L")"
rm -f "$JAR"
R="$("${C[@]}" -u rt-client:rt-secret -d grant_type=authorization_code --data-urlencode "code=$AUTH_CODE" \
  --data-urlencode "redirect_uri=$REDIR" --data-urlencode "code_verifier=$VERIFIER" "$ISS/token")"
[ -n "$(jget access_token <<<"$R")" ] && [ -n "$(jget refresh_token <<<"$R")" ] \
  && [ -n "$(jget id_token <<<"$R")" ] && [ "$(jget scope <<<"$R")" = "openid offline_access read" ] \
  || fail "code exchange: $R"
ok "authorization_code + PKCE via dev interactions (login + consent)"

# Stats: 3 client_credentials (1 failed) + 3 refresh_token (1 failed) + 1 authorization_code
R="$("${C[@]}" "$ISS/test/stats")"
[ "$(jget token_requests <<<"$R")" = 7 ] && [ "$(jget errors <<<"$R")" = 2 ] \
  && [ "$(jget by_grant <<<"$R")" = '{"client_credentials":3,"refresh_token":3,"authorization_code":1}' ] || fail "stats: $R"
ok "stats $R"

# Faults: next request 503 HTML after a delay, the one after succeeds
"${C[@]}" -o /dev/null -X POST "$ISS/test/reset"
"${C[@]}" -o /dev/null -X POST -d '{"delay_ms":200,"fail_count":1,"fail_status":503,"fail_body":"<html>oops</html>","fail_content_type":"text/html"}' "$ISS/test/faults"
OUT="$("${C[@]}" -w '\n%{http_code} %{content_type} %{time_total}' -u cc-basic:cc-basic-secret -d grant_type=client_credentials "$ISS/token")"
read -r STATUS CTYPE TIME <<<"$(tail -n1 <<<"$OUT")"
[ "$(head -n1 <<<"$OUT")" = "<html>oops</html>" ] && [ "$STATUS" = 503 ] && [ "$CTYPE" = text/html ] \
  || fail "fault: $OUT"
awk -v t="$TIME" 'BEGIN { exit !(t >= 0.2) }' || fail "no delay: $TIME"
ok "fault injected: 503 text/html after ${TIME}s"
R="$("${C[@]}" -u cc-basic:cc-basic-secret -d grant_type=client_credentials "$ISS/token")"
[ -n "$(jget access_token <<<"$R")" ] || fail "after fault: $R"
R="$("${C[@]}" "$ISS/test/stats")"
[ "$(jget token_requests <<<"$R")" = 2 ] && [ "$(jget errors <<<"$R")" = 1 ] || fail "stats after fault: $R"
ok "request after fault succeeds; stats $R"

# Closing the server's stdin stops it.
exec {SRV[1]}>&-
for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$SERVER_PID" 2>/dev/null && fail "server still running after stdin closed"
ok "server exits when stdin closes"

echo "$PASS passed, 0 failed"
