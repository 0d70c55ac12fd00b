#!/usr/bin/env bash
# Makes the throw-away PKI the security tests use, in DIR (created; private keys never leave it,
# and none is committed): two CAs, server certificates for localhost/127.0.0.1 (and the private
# addresses the netns tests use), client certificates, one expired.
#   scripts/make_test_certs.sh DIR
# Files: ca.pem ca.key other-ca.pem other-ca.key
#        server.pem server.key            (signed by ca; SAN localhost, 127.0.0.1, 10.77.0.0/24 hosts)
#        other-server.pem other-server.key (signed by other-ca; same names)
#        client-<name>.pem/.key for names tenant-a, tenant-b, admin, node (signed by ca)
#        expired.pem expired.key          (CN tenant-a, signed by ca, valid in 2020 only)
#        stranger.pem stranger.key        (CN tenant-a, signed by other-ca)
set -euo pipefail
dir="$1"
mkdir -p "$dir"
cd "$dir"
umask 077
export OPENSSL_CONF=/dev/null  # no distribution defaults

ca() {  # name cn
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
    -out "$1.pem" -days 30 -subj "/CN=$2" -addext basicConstraints=critical,CA:true \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}

leaf() {  # name cn ca san
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
    -out "$1.csr" -subj "/CN=$2" 2>/dev/null
  printf 'basicConstraints=CA:false\nsubjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$4" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -out "$1.pem" \
    -days 30 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

ca ca kvstash-test-ca
ca other-ca kvstash-other-ca
names="DNS:localhost,IP:127.0.0.1,IP:10.77.0.1,IP:10.77.0.2"
leaf server cachesvc ca "$names"
leaf other-server cachesvc other-ca "$names"
for n in tenant-a tenant-b admin node; do leaf "client-$n" "$n" ca "DNS:$n"; done
leaf stranger tenant-a other-ca "DNS:tenant-a"

# Expired: `openssl ca` is the one command of OpenSSL 3.0 that sets explicit validity dates.
mkdir -p expired-ca
: >expired-ca/index.txt
echo 01 >expired-ca/serial
cat >expired-ca/ca.cnf <<CNF
[ca]
default_ca = test
[test]
database = expired-ca/index.txt
serial = expired-ca/serial
new_certs_dir = expired-ca
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
CNF
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout expired.key \
  -out expired.csr -subj "/CN=tenant-a" 2>/dev/null
openssl ca -batch -config expired-ca/ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr \
  -out expired.pem -startdate 20200101000000Z -enddate 20200201000000Z -notext 2>/dev/null
rm -rf expired.csr expired-ca
echo "[certs] test PKI in $dir"
