#!/usr/bin/env bash
# Run a command against a real Orthanc archive (Debian orthanc + orthanc-dicomweb) started with
# its own generated configuration, ports and storage folder inside a private network namespace:
# Orthanc's DICOM port listens on every interface, so it must not be reachable from outside.
# Orthanc is seeded with the DICOM fixtures: the RG1 study gets a third instance in a second
# series (a copy with new UIDs, made by dcmodify), so one study holds several instances.
#   scripts/orthanc.sh CMD [ARGS...]
# The command runs in the namespace with
#   LOFI_ORTHANC_DIMSE=ORTHANC@127.0.0.1:4242   the archive's DICOM port (called AE ORTHANC)
#   LOFI_ORTHANC_WEB=https://127.0.0.1:8043/dicom-web   DICOMweb root over HTTPS (basic auth
#                                               lofi:lofi-secret), through a TLS front end (socat)
#   LOFI_ORTHANC_REST=http://127.0.0.1:8042     Orthanc's REST API (same credentials)
#   LOFI_ORTHANC_CA=…/ca.pem                    the test CA that signed the front end's certificate
# A CA and a server certificate for 127.0.0.1 are generated with openssl for each run. HTTPS is
# terminated by socat, as a hospital's reverse proxy would: Debian's Orthanc 1.10 crashes
# (SIGSEGV in its embedded web server) on the first TLS connection when SslEnabled is set.
# Orthanc knows two of our AEs: LOFIVIEWER at 127.0.0.1:11113 (C-MOVE destination, may query and
# retrieve) and LOFIPUSH at 127.0.0.1:11114 (the target of its REST /modalities/lofipush/store).
set -euo pipefail
cd "$(dirname "$0")/.."
ORTHANC=${ORTHANC_BIN:-/usr/sbin/Orthanc}
PLUGIN=${ORTHANC_DICOMWEB_PLUGIN:-/usr/share/orthanc/plugins/libOrthancDicomWeb.so}
[ -x "$ORTHANC" ] || { echo "Orthanc is not installed (scripts/setup-system.sh installs it)" >&2; exit 1; }
NS=lofi-orthanc-$$
DATA=$(mktemp -d /tmp/lofi-orthanc-XXXXXX)
cleanup() {
  ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
  for _ in $(seq 1 20); do [ -z "$(ip netns pids "$NS" 2>/dev/null)" ] && break; sleep 0.5; done
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns delete "$NS" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
( cd "$DATA"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=lofi test CA" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj "/CN=127.0.0.1" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > ext.cnf
  openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 \
    -extfile ext.cnf 2>/dev/null
  cat srv.pem srv.key > orthanc.pem )
cat > "$DATA/orthanc.json" <<JSON
{
  "Name": "lofi-test-archive",
  "StorageDirectory": "$DATA/db",
  "IndexDirectory": "$DATA/db",
  "HttpPort": 8042,
  "DicomPort": 4242,
  "DicomAet": "ORTHANC",
  "DicomCheckCalledAet": true,
  "DicomCheckModalityHost": false,
  "RemoteAccessAllowed": true,
  "AuthenticationEnabled": true,
  "RegisteredUsers": { "lofi": "lofi-secret" },
  "DicomAlwaysAllowEcho": true,
  "DicomAlwaysAllowStore": true,
  "DicomModalities": {
    "lofi": { "AET": "LOFIVIEWER", "Host": "127.0.0.1", "Port": 11113,
              "AllowEcho": true, "AllowFind": true, "AllowMove": true, "AllowGet": true, "AllowStore": true },
    "lofipush": { "AET": "LOFIPUSH", "Host": "127.0.0.1", "Port": 11114 }
  },
  "Plugins": [ "$PLUGIN" ],
  "DicomWeb": { "Enable": true, "Root": "/dicom-web/", "EnableWado": false },
  "StableAge": 1,
  "DicomScuTimeout": 20,
  "DicomScpTimeout": 30
}
JSON
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" "$ORTHANC" "$DATA/orthanc.json" >"$DATA/orthanc.log" 2>&1 &
disown
ip netns exec "$NS" socat OPENSSL-LISTEN:8043,bind=127.0.0.1,reuseaddr,fork,verify=0,cert="$DATA/srv.pem",key="$DATA/srv.key" \
  TCP:127.0.0.1:8042 >"$DATA/socat.log" 2>&1 &
disown
up() { ip netns exec "$NS" curl -sf --cacert "$DATA/ca.pem" -u lofi:lofi-secret https://127.0.0.1:8043/system >/dev/null 2>&1; }
for _ in $(seq 1 60); do up && break; sleep 0.5; done
up || { echo "Orthanc did not start; log:" >&2; tail -30 "$DATA/orthanc.log" >&2
         ip netns exec "$NS" curl -sS --cacert "$DATA/ca.pem" -u lofi:lofi-secret https://127.0.0.1:8043/system >&2
         cat "$DATA/socat.log" >&2
         ip netns exec "$NS" ss -ltnp >&2; exit 1; }
# seed: the fixtures, plus a copy of one RG1 image with new series and instance UIDs
cp tests/fixtures/dicom/RG1_JLSN_cr_chest_pa_jpegls_nearlossless.dcm "$DATA/rg1-series2.dcm"
dcmodify -nb -m "(0020,000e)=1.3.6.1.4.1.5962.1.3.9.1.20040826185059.5457.2" \
  -m "(0008,0018)=1.3.6.1.4.1.5962.1.1.9.1.7.20040826185059.5457.2" \
  -m "(0020,0011)=2" "$DATA/rg1-series2.dcm"
for f in tests/fixtures/dicom/*.dcm "$DATA/rg1-series2.dcm"; do
  ip netns exec "$NS" curl -sf -u lofi:lofi-secret -X POST --data-binary @"$f" \
    http://127.0.0.1:8042/instances >/dev/null || { echo "seeding $f failed" >&2; tail -20 "$DATA/orthanc.log" >&2; exit 1; }
done
status=0
ip netns exec "$NS" env LOFI_ORTHANC_DIMSE=ORTHANC@127.0.0.1:4242 \
  LOFI_ORTHANC_WEB=https://127.0.0.1:8043/dicom-web LOFI_ORTHANC_REST=http://127.0.0.1:8042 \
  LOFI_ORTHANC_CA="$DATA/ca.pem" \
  LOFI_ORTHANC_USER=lofi LOFI_ORTHANC_PASSWORD=lofi-secret LOFI_REQUIRE_ORTHANC=1 "$@" || status=$?
if [ "$status" -ne 0 ]; then echo "--- Orthanc log (last 40 lines)" >&2; tail -40 "$DATA/orthanc.log" >&2; fi
exit "$status"
