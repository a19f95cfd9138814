{{/* Chart name, at most 63 characters. */}}
{{- define "gadget-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, plus the chart name unless the release name contains it; at most 63
characters (the limit of a DNS-1123 label).
*/}}
{{- define "gadget-operator.fullname" -}}
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

{{- define "gadget-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gadget-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gadget-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gadget-operator.labels" -}}
helm.sh/chart: {{ include "gadget-operator.chart" . }}
{{ include "gadget-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: gadget-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gadget-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gadget-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gadget-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when the replicas elect a leader with a Lease (several replicas, or asked for), else empty. */}}
{{- define "gadget-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* The daemons' instance store: discovery.store, or by discovery mode (pods: IG's DaemonSet, shared). */}}
{{- define "gadget-operator.daemonStore" -}}
{{- if .Values.discovery.store }}{{ .Values.discovery.store }}{{ else if eq .Values.discovery.mode "pods" }}shared{{ else }}per-node{{ end }}
{{- end }}

{{/* Where the operator finds its files. */}}
{{- define "gadget-operator.staticNodesPath" -}}/etc/gadget-operator/nodes.yaml{{- end }}
{{- define "gadget-operator.tlsDir" -}}/etc/gadget-operator/tls{{- end }}
{{- define "gadget-operator.controlTlsDir" -}}/etc/gadget-operator/control-tls{{- end }}

{{/* Values that the schema cannot check alone. */}}
{{- define "gadget-operator.validate" -}}
{{- if and (eq .Values.discovery.mode "static") (not .Values.discovery.staticNodes) }}
{{- fail "discovery.mode=static needs discovery.staticNodes: a map of node name to \"tcp://host:port\" or \"unix:///path\"" }}
{{- end }}
{{- with .Values.leaderElection }}
{{- if not (lt (float64 .renewDeadline) (float64 .leaseDuration)) }}
{{- fail "leaderElection.renewDeadline must be shorter than leaderElection.leaseDuration" }}
{{- end }}
{{- if not (lt (float64 .retryPeriod) (float64 .renewDeadline)) }}
{{- fail "leaderElection.retryPeriod must be shorter than leaderElection.renewDeadline" }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- with .Values.control }}
{{- if and .expose.enabled (not .expose.tlsSecret) }}
{{- fail "control.expose.enabled needs control.expose.tlsSecret: the control API is exposed with TLS only" }}
{{- end }}
{{- if eq (int .grpcPort) (int .httpPort) }}
{{- fail "control.grpcPort and control.httpPort must differ" }}
{{- end }}
{{- if and $.Values.metrics.enabled (or (eq (int .grpcPort) (int $.Values.metrics.port)) (eq (int .httpPort) (int $.Values.metrics.port))) }}
{{- fail "the control API's ports must differ from metrics.port" }}
{{- end }}
{{- end }}
{{- end }}
