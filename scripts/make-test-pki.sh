#!/usr/bin/env bash
# Makes a small PKI for a respawn fleet with openssl: a CA, a certificate for the broker, and a
# client certificate for every name given — agents (the CN is the agent id, which Mosquitto's
# use_identity_as_username turns into the username its ACL checks) and operators.
#
#   scripts/make-test-pki.sh DIR BROKER_HOST [CLIENT...]
#   scripts/make-test-pki.sh pki broker.lan door-pi garage-pi op-alice
#
# Writes DIR/ca.pem (give it to every client and to the broker), DIR/ca.key (keep it off the
# Pis), DIR/broker.pem + broker.key, and DIR/NAME.pem + NAME.key per client. Run again on the
# same DIR to add clients: the CA and the broker's certificate (for the same host) are kept.
# For tests and small sites; a larger fleet wants a proper CA with revocation.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,13p "$0"; exit 2; }
dir=$1 host=$2
shift 2
mkdir -p "$dir"
cd "$dir"
umask 077
days=825

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f ca.pem ]; then
    key ca.key
    openssl req -x509 -new -key ca.key -out ca.pem -days 3650 -subj "/CN=respawn fleet CA $(date -u +%Y%m%d%H%M%S)-$RANDOM" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

# sign NAME SUBJECT EXTENSIONS: a certificate for NAME.key, signed by the CA.
sign() {
    key "$1.key"
    openssl req -new -key "$1.key" -out "$1.csr" -subj "$2"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" \
        -days "$days" -extfile <(printf '%s\n' "$3") 2>/dev/null
    rm -f "$1.csr"
}

# Run again to add clients, the broker's certificate for the same host is kept: the broker
# need not be given a new key.
broker="kept broker.pem/.key"
# Kept only if it is for this host and this CA signed it (a CA made again does not trust it).
if ! { [ -f broker.pem ] && openssl x509 -in broker.pem -noout -subject -nameopt RFC2253 | grep -qxF "subject=CN=$host" &&
       openssl verify -CAfile ca.pem broker.pem >/dev/null 2>&1; }; then
    if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san="IP:$host"; else san="DNS:$host"; fi
    sign broker "/CN=$host" "subjectAltName=$san
basicConstraints=CA:FALSE
extendedKeyUsage=serverAuth"
    broker="broker.pem/.key"
fi

for name in "$@"; do
    sign "$name" "/CN=$name" "basicConstraints=CA:FALSE
extendedKeyUsage=clientAuth"
done
chmod 644 ca.pem broker.pem ./*.pem
echo "PKI in $dir: ca.pem, $broker${*:+, and for }$*"
