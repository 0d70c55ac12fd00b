{{/* Chart name, truncated to the 63 characters Kubernetes allows in a name. */}}
{{- define "kvstash.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release name, plus the chart name unless already in it. */}}
{{- define "kvstash.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kvstash.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvstash.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvstash.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kvstash.labels" -}}
helm.sh/chart: {{ include "kvstash.chart" . }}
{{ include "kvstash.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kvstash.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvstash.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Paths inside the container. */}}
{{- define "kvstash.socketDir" -}}/run/kvstash{{- end }}
{{- define "kvstash.dataDir" -}}/var/lib/kvstash{{- end }}
{{- define "kvstash.configDir" -}}/etc/kvstash{{- end }}

{{/* The metrics/health port; 0 would disable /healthz, which the probes need. */}}
{{- define "kvstash.metricsPort" -}}
{{- $port := int (dig "metrics" "port" 9464 .Values.config) }}
{{- if or (le $port 0) (gt $port 65535) }}
{{- fail "config.metrics.port must be in 1..65535: the probes use /healthz on it" }}
{{- end }}
{{- $port }}
{{- end }}

{{/* Cluster mode: "true" when cachesvc talks to other nodes (etcd membership, static peers, or
peers.tcpListener), else "". It then listens on TCP for its peers and on the unix socket for the
node's engines. */}}
{{- define "kvstash.clusterMode" -}}
{{- $etcd := dig "cluster" "etcd" list .Values.config }}
{{- $static := dig "peers" "addresses" list .Values.config }}
{{- if or .Values.peers.etcdEndpoints $etcd $static .Values.peers.tcpListener }}true{{- end }}
{{- end }}

{{/* The unix socket engine pods dial, inside the container. */}}
{{- define "kvstash.socketTarget" -}}
{{- printf "unix://%s/%s" (include "kvstash.socketDir" .) .Values.socket.name }}
{{- end }}

{{/* cachesvc's configuration: the user's `config` with listen, local_listen and data_dir set by
the chart. Cluster mode: listen is TCP (peers.listenAddress:peers.port) and local_listen the unix
socket; otherwise listen is the unix socket. */}}
{{- define "kvstash.config" -}}
{{- $config := deepCopy (default dict .Values.config) }}
{{- if include "kvstash.clusterMode" . }}
{{- $_ := set $config "listen" (printf "%s:%d" .Values.peers.listenAddress (int .Values.peers.port)) }}
{{- $_ := set $config "local_listen" (include "kvstash.socketTarget" .) }}
{{- else }}
{{- $_ := set $config "listen" (include "kvstash.socketTarget" .) }}
{{- end }}
{{- $storage := default dict (get $config "storage") }}
{{- $_ := set $storage "data_dir" (include "kvstash.dataDir" .) }}
{{- if eq .Values.ssd.mode "none" }}
{{- $_ := set $storage "ssd_capacity" "0" }}
{{- end }}
{{- $_ := set $config "storage" $storage }}
{{- $tls := default dict (get $config "tls") }}
{{- if .Values.tls.enabled }}
{{- $_ := set $tls "cert" "/etc/kvstash/tls/tls.crt" }}
{{- $_ := set $tls "key" "/etc/kvstash/tls/tls.key" }}
{{- $_ := set $tls "ca" "/etc/kvstash/tls/ca.crt" }}
{{- end }}
{{- $_ := set $config "tls" $tls }}
{{- if .Values.tenants.enabled }}
{{- $_ := set $config "auth" (dict "tokens_file" (printf "/etc/kvstash/tenants/%s" .Values.tenants.key)) }}
{{- end }}
{{- if .Values.peers.secretName }}
{{- $peers := default dict (get $config "peers") }}
{{- $_ := set $peers "secret_file" "/etc/kvstash/peers/secret" }}
{{- $_ := set $config "peers" $peers }}
{{- end }}
{{- toYaml $config }}
{{- end }}
