# Sourced by the load runners (data-plane.sh, wrk.sh): the benchmark's own nginx, never the system service.
#
#   start_nginx CPU DIR
#
# One worker on CPU, a server for each kind in $KINDS in front of ${TARGET[direct-KIND]} with upstream
# keep-alive, buffering off for the event stream (as an SSE route is configured); its files under DIR. Sets
# TARGET[nginx-KIND], NGINX_MASTER and NGINX_WORKER, and adds the master to PIDS. Also defines children
# and free_port, which the runners use too.

children() { awk -v parent="$1" '$4 == parent {print $1}' /proc/[0-9]*/stat 2>/dev/null || true; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_nginx() {
    local cpu=$1 dir=$2 servers="" kind port buffering
    mkdir -p "$dir"
    for kind in $KINDS; do
        port=$(free_port)
        TARGET[nginx-$kind]=127.0.0.1:$port
        buffering=""; [ "$kind" = sse ] && buffering="proxy_buffering off;"
        servers+="
    upstream up_$kind { server ${TARGET[direct-$kind]}; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$port;
        location / { proxy_pass http://up_$kind; proxy_http_version 1.1; proxy_set_header Connection \"\"; $buffering }
    }"
    done
    cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
user $(id -un) $(id -gn);
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
$servers
}
CONF
    taskset -c "$cpu" nginx -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log" &
    NGINX_MASTER=$!
    PIDS+=("$NGINX_MASTER")
    NGINX_WORKER=""
    for _ in $(seq 1 100); do NGINX_WORKER=$(children "$NGINX_MASTER"); [ -n "$NGINX_WORKER" ] && break; sleep 0.05; done
    [ -n "$NGINX_WORKER" ] || { echo "nginx did not start; see $dir/error.log" >&2; exit 1; }
}
