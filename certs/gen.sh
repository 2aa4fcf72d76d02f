#!/usr/bin/env bash
# Makes a development CA and the certificates Switchyard's TLS setups use:
#
#   ca.crt / ca.key            the development CA (trust it in clients and brokers)
#   server.crt / server.key    the proxy's listener certificate; its names cover
#                              localhost, 127.0.0.1 and every SNI name *.<domain>
#   client.crt / client.key    a client certificate (subject CN=<client CN>) for mTLS
#   expired.crt / expired.key  a client certificate that expired in 2020 (for tests)
#   rogue-ca.crt, rogue.crt/.key  a client certificate from a CA nobody trusts
#
# Usage: certs/gen.sh [OUT_DIR] [SNI_DOMAIN] [CLIENT_CN]
#   defaults: the directory of this script, kafka.local, app-1
# Keys are written 0600. Nothing here is for production use.
set -euo pipefail

out="${1:-$(cd "$(dirname "$0")" && pwd)}"
domain="${2:-kafka.local}"
client_cn="${3:-app-1}"
mkdir -p "$out"
cd "$out"
umask 077

req() { # key, csr, subject
    openssl req -new -newkey rsa:2048 -nodes -keyout "$1" -out "$2" -subj "$3" 2>/dev/null
}

# CA
openssl req -x509 -new -newkey rsa:2048 -nodes -days 3650 \
    -keyout ca.key -out ca.crt -subj "/CN=Switchyard development CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# Server: every name a client may use to reach the proxy.
req server.key server.csr "/CN=switchyard"
cat > server.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:${domain},DNS:*.${domain}
EOF
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days 825 -out server.crt -extfile server.ext 2>/dev/null

# Client (mTLS): the subject becomes the client's principal.
# O first: Kafka (and Switchyard) show a subject last RDN first, as CN=...,O=...
req client.key client.csr "/O=Switchyard development/CN=${client_cn}"
cat > client.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EOF
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days 825 -out client.crt -extfile client.ext 2>/dev/null

# Expired client certificate: signed by the same CA, valid only in January 2020.
mkdir -p ca-db
: > ca-db/index.txt
echo 1000 > ca-db/serial
cat > ca.cnf <<EOF
[ca]
default_ca = dev
[dev]
database = ca-db/index.txt
serial = ca-db/serial
new_certs_dir = ca-db
certificate = ca.crt
private_key = ca.key
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
EOF
req expired.key expired.csr "/CN=expired-app"
openssl ca -batch -config ca.cnf -in expired.csr -out expired.crt \
    -startdate 20200101000000Z -enddate 20200102000000Z -extfile client.ext \
    -notext 2>/dev/null

# A client certificate from a CA that nobody trusts.
openssl req -x509 -new -newkey rsa:2048 -nodes -days 3650 \
    -keyout rogue-ca.key -out rogue-ca.crt -subj "/CN=Rogue CA" \
    -addext "basicConstraints=critical,CA:TRUE" 2>/dev/null
req rogue.key rogue.csr "/CN=rogue-app"
openssl x509 -req -in rogue.csr -CA rogue-ca.crt -CAkey rogue-ca.key -CAcreateserial \
    -days 825 -out rogue.crt -extfile client.ext 2>/dev/null

rm -f ./*.csr ./*.ext ca.cnf ./*.srl
rm -rf ca-db
chmod 600 ./*.key
chmod 644 ./*.crt
echo "certificates written to $out (SNI names *.${domain}, client CN=${client_cn})"
