{{/* The chart name (app.kubernetes.io/name). */}}
{{- define "flowkeeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: the release name when it holds the chart name, else
"<release>-<chart>". It also names the Lease that elects the active replica.
*/}}
{{- define "flowkeeper.fullname" -}}
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

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "flowkeeper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "flowkeeper.labels" -}}
helm.sh/chart: {{ include "flowkeeper.chart" . }}
{{ include "flowkeeper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: flowkeeper
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The labels that select the operator's Pods (never change them: a Deployment's selector is immutable). */}}
{{- define "flowkeeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowkeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "flowkeeper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flowkeeper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest when a digest is given, else repository:tag (tag defaults to appVersion). */}}
{{- define "flowkeeper.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
What the operator does in the namespaces it serves, for the ClusterRole (all namespaces) or each
namespace's Role: read flows and redrives, patch their status, read Deployments and patch only their scale, post
core Events (create, and patch to count repeats), and get the Secrets named in rbac.secretNames.
Exactly the calls it makes: no update, no delete, no list or watch of Secrets.
*/}}
{{- define "flowkeeper.rules" -}}
- apiGroups: ["flowkeeper.io"]
  resources: ["integrationflows"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["flowkeeper.io"]
  resources: ["integrationflows/status"]
  verbs: ["get", "patch"]
- apiGroups: ["flowkeeper.io"]
  resources: ["deadletterredrives"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["flowkeeper.io"]
  resources: ["deadletterredrives/status"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["deployments/scale", "statefulsets/scale"]
  verbs: ["get", "patch"]
{{- if .Values.argoRollouts.enabled }}
- apiGroups: ["argoproj.io"]
  resources: ["rollouts"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["argoproj.io"]
  resources: ["rollouts/scale"]
  verbs: ["get", "patch"]
{{- end }}
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- with .Values.rbac.secretNames }}
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson (uniq .) }}
  verbs: ["get"]
{{- end }}
{{- end }}
