{{/*
Names are fixed, not derived from the release: the agent looks its objects up by these names
(Lease kube-system/etcdsnap-leader, heartbeats in namespace etcdsnap), so one release per cluster.
*/}}
{{- define "etcdsnap.systemNamespace" -}}kube-system{{- end -}}
{{- define "etcdsnap.heartbeatNamespace" -}}etcdsnap{{- end -}}
{{- define "etcdsnap.serviceAccountName" -}}etcdsnap{{- end -}}

{{- define "etcdsnap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "etcdsnap.labels" -}}
app.kubernetes.io/name: etcdsnap
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "etcdsnap.chart" . }}
{{- end -}}

{{- define "etcdsnap.selectorLabels" -}}
app.kubernetes.io/name: etcdsnap
app.kubernetes.io/component: agent
{{- end -}}

{{- define "etcdsnap.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The host directory etcdsnap works in: its own (kubeadm) or the K3s/RKE2 data directory. */}}
{{- define "etcdsnap.dataDir" -}}
{{- if .Values.dataDir -}}
{{- .Values.dataDir | trimSuffix "/" -}}
{{- else if eq .Values.preset "k3s" -}}
/var/lib/rancher/k3s
{{- else if eq .Values.preset "rke2" -}}
/var/lib/rancher/rke2
{{- else -}}
/var/lib/etcdsnap
{{- end -}}
{{- end -}}

{{/*
Whose names the agent writes (--program): RKE2's on the rke2 preset (etcd.rke2.cattle.io/ labels,
rke2-etcd-snapshots, rke2-* S3 metadata), K3s's otherwise.
*/}}
{{- define "etcdsnap.program" -}}
{{- if eq .Values.preset "rke2" -}}rke2{{- else -}}k3s{{- end -}}
{{- end -}}

{{- define "etcdsnap.legacyConfigMap" -}}
{{- printf "%s-etcd-snapshots" (include "etcdsnap.program" .) -}}
{{- end -}}

{{- define "etcdsnap.extraMetadataConfigMap" -}}
{{- default (printf "%s-etcd-snapshot-extra-metadata" (include "etcdsnap.program" .)) .Values.extraMetadataConfigMap -}}
{{- end -}}

{{- define "etcdsnap.isRancher" -}}
{{- if has .Values.preset (list "k3s" "rke2") -}}true{{- end -}}
{{- end -}}

{{/* etcd's CA, client certificate and client key on the host, by preset. */}}
{{- define "etcdsnap.etcdTLS" -}}
{{- if include "etcdsnap.isRancher" . -}}
{{- $dir := printf "%s/server/tls/etcd" (include "etcdsnap.dataDir" .) -}}
cacert: {{ $dir }}/server-ca.crt
cert: {{ $dir }}/client.crt
key: {{ $dir }}/client.key
{{- else -}}
cacert: /etc/kubernetes/pki/etcd/ca.crt
cert: /etc/kubernetes/pki/etcd/healthcheck-client.crt
key: /etc/kubernetes/pki/etcd/healthcheck-client.key
{{- end -}}
{{- end -}}

{{/*
The host directories the agent writes: K3s/RKE2's snapshot directory, the .metadata directory
beside it (K3s's extra metadata and etcdsnap's records) and etcdsnap's private state directory,
never the rest of server/db (etcd's own data). kubeadm: etcdsnap's whole data directory.
*/}}
{{- define "etcdsnap.writableDirs" -}}
{{- $dd := include "etcdsnap.dataDir" . -}}
{{- if include "etcdsnap.isRancher" . -}}
snapshots: {{ $dd }}/server/db/snapshots
metadata: {{ $dd }}/server/db/.metadata
state: {{ $dd }}/server/db/.etcdsnap
{{- if .Values.deltas.enabled }}
deltas: {{ $dd }}/server/db/.etcdsnap-deltas
{{- end }}
{{- else -}}
data: {{ $dd }}
{{- end -}}
{{- end -}}

{{- define "etcdsnap.s3SecretName" -}}
{{- default "etcdsnap-s3-config" .Values.s3.existingSecret -}}
{{- end -}}

{{/* Checks between values that the schema cannot express; fails with a message naming them. */}}
{{- define "etcdsnap.validate" -}}
{{- if and .Values.s3.existingSecret .Values.s3.create -}}
{{- fail "s3.existingSecret and s3.create are mutually exclusive: name an existing Secret, or let the chart create one, not both" -}}
{{- end -}}
{{- if and .Values.s3.enabled (not .Values.s3.existingSecret) (not .Values.s3.create) -}}
{{- fail "s3.enabled needs its settings: set s3.existingSecret (a Secret in kube-system with K3s's etcd-s3-* keys) or s3.create" -}}
{{- end -}}
{{- if and .Values.s3.create (not .Values.s3.create.bucket) -}}
{{- fail "s3.create.bucket is required when the chart creates the S3 Secret" -}}
{{- end -}}
{{- if and .Values.s3.create (or (and .Values.s3.create.accessKey (not .Values.s3.create.secretKey)) (and .Values.s3.create.secretKey (not .Values.s3.create.accessKey))) -}}
{{- fail "s3.create.accessKey and s3.create.secretKey go together: set both, or neither for the AWS credential chain" -}}
{{- end -}}
{{- end -}}

{{/*
Whether an object exists in the cluster and this release does not manage it (K3s's own CRD, or
objects applied from deploy/): the chart then leaves it alone instead of failing the install.
`helm template` and client-side dry runs see no cluster, so they always render the object.
*/}}
{{- define "etcdsnap.existsUnmanaged" -}}
{{- $root := index . 0 -}}
{{- $obj := lookup (index . 1) (index . 2) (index . 3) (index . 4) -}}
{{- if $obj -}}
{{- $annotations := default (dict) $obj.metadata.annotations -}}
{{- $ours := and (eq (get $annotations "meta.helm.sh/release-name") $root.Release.Name) (eq (get $annotations "meta.helm.sh/release-namespace") $root.Release.Namespace) -}}
{{- if not $ours -}}true{{- end -}}
{{- end -}}
{{- end -}}
