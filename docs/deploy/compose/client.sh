#!/bin/sh
# Compose demo (docker-compose.yml): the client. Each round takes a session ticket from a
# random nginx (openssl s_client -sess_out) and presents it to a different random nginx
# (-sess_in). "Reused" means the second box decrypted a ticket the first one issued: both
# hold the same keys, delivered by their own stek peer. Rounds alternate TLS 1.2 and TLS 1.3,
# and stek rotates every 20 s meanwhile. Bounded: ROUNDS rounds (default 60), one a second,
# then it prints the ratio and exits, 0 only if every round resumed.
#
# POSIX sh; needs openssl, od and timeout (the nginx:1.27 image has them).

set -u

ROUNDS=${ROUNDS:-60}
SNI=stek-demo
SESSION=/tmp/stek-demo-session.pem

# One TLS connection. stdin stays open for a second: TLS 1.3 tickets arrive after the
# handshake, and s_client writes -sess_out only when they do.
connect() {
    host=$1
    shift
    sleep 1 | timeout 10 openssl s_client -connect "$host:443" -servername "$SNI" "$@" 2>/dev/null
}

# A random box 1..3 other than $1.
pick_other() {
    while :; do
        n=$(($(od -An -N1 -tu1 /dev/urandom) % 3 + 1))
        if [ "$n" != "$1" ]; then
            echo "$n"
            return
        fi
    done
}

echo "waiting for nginx-1..3 to serve TLS (each starts once its stek peer wrote the first keys)"
for n in 1 2 3; do
    waited=0
    until connect "nginx-$n" | grep -q -e '^New,' -e '^Reused,'; do
        waited=$((waited + 1))
        if [ "$waited" -ge 120 ]; then
            echo "nginx-$n did not answer TLS within 2 minutes: see docker compose logs stek-$n nginx-$n" >&2
            exit 2
        fi
        sleep 1
    done
    echo "nginx-$n is up"
done

reused=0
round=1
while [ "$round" -le "$ROUNDS" ]; do
    from=$(pick_other 0)
    to=$(pick_other "$from")
    if [ $((round % 2)) -eq 0 ]; then proto=-tls1_3; else proto=-tls1_2; fi
    rm -f "$SESSION"
    connect "nginx-$from" "$proto" -sess_out "$SESSION" >/dev/null
    if [ ! -s "$SESSION" ]; then
        result="no ticket from nginx-$from"
    elif connect "nginx-$to" "$proto" -sess_in "$SESSION" | grep -q '^Reused,'; then
        reused=$((reused + 1))
        result="Reused"
    else
        result="full handshake (ticket not accepted)"
    fi
    echo "round $round/$ROUNDS ${proto#-}: ticket from nginx-$from, presented to nginx-$to: $result"
    round=$((round + 1))
    sleep 1
done

echo "cross-box resumption: $reused of $ROUNDS tickets reused on another box ($((reused * 100 / ROUNDS))%)"
if [ "$reused" -eq "$ROUNDS" ]; then
    exit 0
fi
exit 1
