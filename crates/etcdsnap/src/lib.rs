//! etcdsnap: etcd snapshots for Kubernetes control planes.
