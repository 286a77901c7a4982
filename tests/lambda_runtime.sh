# A minimal AWS Lambda Runtime API client in busybox shell (wget, sed, nc), for the docker
# instance tests: `next` (headers with wget -S), then the event decides what to do, then
# `response` or `error`. "probe" events report what the instance can reach.
api=$AWS_LAMBDA_RUNTIME_API; base=http://$api/2018-06-01/runtime
post() {  # post PATH BODY
  wget -q -O /dev/null --header 'Content-Type: application/json' --post-data "$2" "$base/$1"
}
header() { sed -n "s/^ *$1: *\([^[:space:]]*\).*$/\1/p" /tmp/headers; }
check() {  # check NAME HOST PORT: whether a TCP connection opens
  if nc -w 2 "$2" "$3" </dev/null >/dev/null 2>&1; then
    echo "$1=open"
  else
    echo "$1=closed"
  fi
}
[ -n "${INIT_FAIL:-}" ] && { post init/error '{"errorMessage":"no config","errorType":"Init.Config"}'; exit 1; }
n=0
while :; do
  wget -q -S -O /tmp/event "$base/invocation/next" 2>/tmp/headers || exit 2
  id=$(header Lambda-Runtime-Aws-Request-Id)
  deadline=$(header Lambda-Runtime-Deadline-Ms)
  trace=$(header Lambda-Runtime-Trace-Id)
  event=$(cat /tmp/event)
  n=$((n+1))
  echo "serving $id #$n" >&2
  case "$event" in
    *sleep*) sleep 60 ;;
    *crash*) exit 3 ;;
    *fail*) post "invocation/$id/error" '{"errorMessage":"it failed","errorType":"Shell.Error","stackTrace":[]}'; continue ;;
    *probe*)
      service=$(echo "$event" | sed -n 's/.*"port": *\([0-9]*\).*/\1/p')
      result="$(check own "${api%:*}" "${api#*:}") $(check redis-local 127.0.0.1 6379) $(check redis-gateway "${api%:*}" 6379) $(check internet 1.1.1.1 80)"
      result="$result $(check host-service "${api%:*}" "$service")"
      post "invocation/$id/response" "\"$result\""; continue ;;
  esac
  post "invocation/$id/response" "{\"n\":$n,\"id\":\"$id\",\"deadline\":$deadline,\"trace\":\"$trace\",\"api\":\"$api\",\"event\":$event}"
done
