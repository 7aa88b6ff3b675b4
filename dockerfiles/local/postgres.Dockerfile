# Debian's PostgreSQL behind the official `postgres` image's contract, as far as docker-compose.yml uses it:
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB create the role and database on first start, the data lives in
# /var/lib/postgresql/data (a volume), it listens on 5432 with password authentication, and pg_isready answers.
# A local-testing aid (docker-compose.local.yml); the shipped compose file keeps postgres:16.10-bookworm.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
