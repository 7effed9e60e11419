{{/* Standard names and labels (the `helm create` conventions). */}}

{{- define "distill-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "distill-operator.fullname" -}}
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

{{- define "distill-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The operator's pods. `component` keeps the selector off the pods of a DistillJob that happens to
share the release's name (the operator labels those `app.kubernetes.io/instance: <job>` too).
*/}}
{{- define "distill-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "distill-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "distill-operator.labels" -}}
helm.sh/chart: {{ include "distill-operator.chart" . }}
{{ include "distill-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: distill-operator
{{- end }}

{{- define "distill-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "distill-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "distill-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The kopf peering object's name: one per release, shared by all replicas. */}}
{{- define "distill-operator.peeringName" -}}
{{- include "distill-operator.fullname" . }}
{{- end }}

{{/* Generated RBAC rules (files/rbac-rules.yaml), split by the scope they need. */}}
{{- define "distill-operator.rules" -}}
{{- $rules := .Files.Get "files/rbac-rules.yaml" | fromYaml }}
{{- if not $rules.namespaced }}
{{- fail "files/rbac-rules.yaml is missing or empty: run `make crds`" }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/*
Who may scrape the job pods' metrics ports: this operator's own pods (its progress timer), then
jobPods.networkPolicy.metricsPeers. A YAML list (`fromYamlArray` it).
*/}}
{{- define "distill-operator.metricsPeers" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Release.Namespace }}
  podSelector:
    matchLabels:
      {{- include "distill-operator.selectorLabels" . | nindent 6 }}
{{- with .Values.jobPods.networkPolicy.metricsPeers }}
{{ toYaml . }}
{{- end }}
{{- end }}
