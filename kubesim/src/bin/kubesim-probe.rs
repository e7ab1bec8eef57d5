//! kubesim-probe: a program for kubesim's tests to run inside a pod. It connects with kube-rs's
//! in-cluster configuration (the ServiceAccount token, `ca.crt` and namespace under
//! `/var/run/secrets/kubernetes.io/serviceaccount`, `KUBERNETES_SERVICE_HOST`/`_PORT`), tries
//! a few requests and prints one line per request: `<what>: ok <count>` or
//! `<what>: <http code> <message>`. Then it sleeps (so a Deployment's pod stays up), unless
//! `--once` is given.

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};

fn outcome<T: Clone + serde::de::DeserializeOwned + std::fmt::Debug>(
    r: Result<kube::core::ObjectList<T>, kube::Error>,
) -> String {
    match r {
        Ok(list) => format!("ok {}", list.items.len()),
        Err(kube::Error::Api(s)) => format!("{} {}", s.code, s.message),
        Err(e) => format!("error {e}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // Both rustls providers can end up compiled in (feature unification across the
    // workspace); choose one explicitly, as rustls asks.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let once = std::env::args().any(|a| a == "--once");
    let config = kube::Config::incluster()?;
    let ns = config.default_namespace.clone();
    let client = kube::Client::try_from(config)?;
    let lp = ListParams::default();
    println!("namespace: {ns}");
    println!(
        "pods: {}",
        outcome(Api::<Pod>::namespaced(client.clone(), &ns).list(&lp).await)
    );
    println!(
        "secrets: {}",
        outcome(
            Api::<Secret>::namespaced(client.clone(), &ns)
                .list(&lp)
                .await
        )
    );
    println!(
        "pods in default: {}",
        outcome(
            Api::<Pod>::namespaced(client.clone(), "default")
                .list(&lp)
                .await
        )
    );
    if !once {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    }
    Ok(())
}
