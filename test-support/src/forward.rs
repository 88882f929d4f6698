//! A Service's virtual address for the API server, standing in for kube-proxy (the test cluster has none):
//! a TCP forwarder on a loopback port of its own that follows the Service's endpoints, from the
//! EndpointSlices the control plane's controller builds (label `kubernetes.io/service-name`), and passes each
//! connection to one of its ready endpoints, round-robin, bytes untouched (TLS goes through end to end). The
//! admission webhook is registered with `clientConfig.url` on this address, since the API server cannot
//! reach `ebb-webhook.NAMESPACE.svc` without DNS and kube-proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebb_autoscaler::cluster::slices::discover_endpoint_slices;
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::gateway::slice_endpoints;

/// How often the endpoints are listed again.
const FOLLOW: Duration = Duration::from_millis(200);

/// See the module documentation. Stops when dropped.
pub struct ServiceForwarder {
    addr: SocketAddr,
    endpoints: Arc<Mutex<Vec<SocketAddr>>>,
    tasks: Vec<AbortHandle>,
}

impl ServiceForwarder {
    /// Forwards `127.0.0.1:<free port>` to Service `namespace/name`'s ready endpoints.
    pub async fn start(client: &Client, namespace: &str, name: &str) -> ServiceForwarder {
        let resource = discover_endpoint_slices(client).await.expect("discover the EndpointSlice API");
        let slices: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let endpoints: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let following = endpoints.clone();
        let selector = format!("kubernetes.io/service-name={name}");
        let follow = tokio::spawn(async move {
            loop {
                if let Ok(list) = slices.list(&ListParams::default().labels(&selector)).await {
                    let mut now: Vec<SocketAddr> = list.items.iter().flat_map(slice_endpoints).collect();
                    now.sort();
                    *following.lock().unwrap() = now;
                }
                tokio::time::sleep(FOLLOW).await;
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the forwarder");
        let addr = listener.local_addr().unwrap();
        let targets = endpoints.clone();
        let next = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                let targets = targets.lock().unwrap().clone();
                let next = next.clone();
                tokio::spawn(async move {
                    // An endpoint that refuses (a pod just gone, not yet out of the slice) is passed over.
                    for _ in 0..targets.len() {
                        let target = targets[next.fetch_add(1, Ordering::Relaxed) % targets.len()];
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        ServiceForwarder { addr, endpoints, tasks: vec![follow.abort_handle(), accept.abort_handle()] }
    }

    /// The forwarder's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoints it forwards to now.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.endpoints.lock().unwrap().clone()
    }
}

impl Drop for ServiceForwarder {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
