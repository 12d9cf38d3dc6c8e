# Stand-in for the official postgres:15 image, from Debian's postgresql-15 (test infrastructure; see offline-images.sh).
ARG BASE
FROM ${BASE}
# No cluster from the package: the entry point makes one in PGDATA, as the official image does.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf \
    && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
RUN mkdir -p /var/run/postgresql /docker-entrypoint-initdb.d "$PGDATA" \
    && chown -R postgres:postgres /var/run/postgresql "$PGDATA" && chmod 2777 /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
