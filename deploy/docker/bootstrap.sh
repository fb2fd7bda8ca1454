#!/bin/sh
# The compose demo's one-shot set-up, run as 65532 in the coordinator image's `bootstrap`
# stage before anything else starts. Idempotent: what exists is kept.
#   /pki                    the federation's PKI (pki init; one certificate per facility)
#   /facilities/SITE        what that facility's agent mounts: agent.toml, ca.pem, its
#                           certificate and key, and its hospital's rows of the bundled CSV
#   /db-secret              the PostgreSQL password (for the postgres image) and a pgpass
#                           file for the coordinator, made here, never in an image
set -eu
umask 077

if [ ! -f /pki/ca.pem ]; then
    harambee-coordinator pki init --dir /pki --san coordinator --san localhost --san 127.0.0.1
fi

for site in cleveland hungary switzerland; do
    dir=/facilities/$site
    if [ ! -f "/pki/issued/agent-$site.pem" ]; then
        harambee-coordinator pki issue --dir /pki --facility "$site"
    fi
    cp /pki/ca.pem "$dir/ca.pem"
    cp "/pki/issued/agent-$site.pem" "$dir/agent.pem"
    cp "/pki/issued/agent-$site.key" "$dir/agent.key"
    # This hospital's rows only, with the header.
    awk -F, -v site="$site" 'NR == 1 || $1 == site' \
        /usr/share/harambee/heart_disease_uci_4sites.csv >"$dir/data.csv"
    sed "s/@FACILITY@/$site/g" /usr/share/harambee/agent.toml >"$dir/agent.toml"
done

if [ ! -f /db-secret/pgpass ]; then
    password=$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32)
    printf '%s' "$password" >/db-secret/postgres-password
    printf 'postgres:5432:harambee:harambee:%s\n' "$password" >/db-secret/pgpass
fi
echo "bootstrap: PKI, 3 facilities and the database password are in place"
