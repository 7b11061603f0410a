//! Data in a real etcd that looks like a Kubernetes control plane's.

/// Puts `n` objects shaped like what a kube-apiserver stores (keys under `/registry/`, JSON
/// values of a kilobyte or two) into etcd. Every fifth is an Event attached to a lease, as the
/// API server attaches each minute's Events to one lease of `--event-ttl`: a snapshot of a real
/// cluster always holds leased keys (etcdutl 3.6's `hashkv` cannot read them).
pub async fn load_kube_like_data(client: &mut etcd_client::Client, n: usize) -> Result<(), etcd_client::Error> {
    let lease = client.lease_grant(3600, None).await?.id();
    for i in 0..n {
        let (kind, ns) = match i % 5 {
            0 => ("configmaps", "kube-system"),
            1 => ("pods", "default"),
            2 => ("secrets", "app"),
            3 => ("services", "default"),
            _ => ("events", "default"),
        };
        let name = format!("obj-{i:06}");
        let value = serde_json::json!({
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns, "uid": format!("{:08x}-0000-4000-8000-{:012x}", i, i * 7919),
                         "labels": {"app": format!("app-{}", i % 17), "tier": "backend"},
                         "resourceVersion": (i + 1).to_string()},
            "data": {"config.yaml": format!("replicas: {}\nimage: registry.example.com/app:{}\n{}", i % 5, i % 11, "x: y\n".repeat(40 + i % 50))},
        });
        let options = (kind == "events").then(|| etcd_client::PutOptions::new().with_lease(lease));
        client.put(format!("/registry/{kind}/{ns}/{name}"), value.to_string(), options).await?;
    }
    Ok(())
}

/// A single etcd member holding `n` objects from [`load_kube_like_data`].
pub async fn etcd_with_objects(n: usize) -> Result<testenv::Etcd, Box<dyn std::error::Error>> {
    let etcd = testenv::Etcd::single().await?;
    load_kube_like_data(&mut etcd.client().await?, n).await?;
    Ok(etcd)
}
