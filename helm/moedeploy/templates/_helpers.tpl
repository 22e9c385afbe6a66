{{/* Names ------------------------------------------------------------------------------------------ */}}

{{- define "moedeploy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: "<release>-moedeploy", or the release name when it already contains it. */}}
{{- define "moedeploy.fullname" -}}
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

{{- define "moedeploy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "moedeploy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "moedeploy.peeringName" -}}
{{- default (include "moedeploy.fullname" .) .Values.peering.name }}
{{- end }}

{{/* "true" when the operator serves every namespace (no watchNamespaces list), "" otherwise. */}}
{{- define "moedeploy.clusterWide" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/* Rules across values that values.schema.json cannot explain well; the Deployment includes this. */}}
{{- define "moedeploy.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail (printf "replicaCount is %d but peering.enabled is false: several operators without peering would all reconcile the same ModelDeployments; set peering.enabled=true or replicaCount=1" (int .Values.replicaCount)) }}
{{- end }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------------------- */}}

{{- define "moedeploy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moedeploy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "moedeploy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "moedeploy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: moedeploy
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Operator container ------------------------------------------------------------------------------ */}}

{{- define "moedeploy.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Command-line arguments of `python -m moe_operator`, one YAML list item per line. */}}
{{- define "moedeploy.operatorArgs" -}}
- run
{{- range .Values.operator.watchNamespaces }}
- --namespace={{ . }}
{{- else }}
- --all-namespaces
{{- end }}
{{- with .Values.operator.prometheusUrl }}
- --prometheus-url={{ . }}
{{- end }}
{{- if .Values.peering.enabled }}
- --peering={{ include "moedeploy.peeringName" . }}
{{- else }}
- --standalone
{{- end }}
- --liveness=http://0.0.0.0:{{ include "moedeploy.healthPort" . }}/healthz
{{- if eq .Values.operator.logLevel "debug" }}
- --verbose
{{- end }}
{{- end }}

{{- define "moedeploy.healthPort" -}}8080{{- end }}

{{/* RBAC rules ---------------------------------------------------------------------------------------
Exactly moe_operator.kube.PERMISSIONS (tests/integration/test_helm_chart.py compares them): the calls of
the reconciler and of kopf itself, which runs with resource scanning disabled and so needs no access to
CRDs or Namespaces. No wildcards, no Secrets. */}}

{{- define "moedeploy.rbacSubjects" -}}
- kind: ServiceAccount
  name: {{ include "moedeploy.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/* Namespaced resources the operator reads and writes: granted cluster-wide or per watched namespace. */}}
{{- define "moedeploy.rules.workload" -}}
# kopf lists and watches them, and keeps its progress in their annotations
- apiGroups: [moedeploy.dev]
  resources: [modeldeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [moedeploy.dev]
  resources: [modeldeployments/status]
  verbs: [patch]
# children carry ownerReferences with blockOwnerDeletion, which needs update on the owner's finalizers
- apiGroups: [moedeploy.dev]
  resources: [modeldeployments/finalizers]
  verbs: [update]
# watched for drift and progress; written by server-side apply (a patch that creates when absent)
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# read on full passes to apply only what differs
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* kopf's keep-alives in the peering object: it lists and watches them all, but patches only its own. */}}
{{- define "moedeploy.rules.peering" -}}
{{- $resource := ternary "clusterkopfpeerings" "kopfpeerings" (eq (include "moedeploy.clusterWide" .) "true") -}}
- apiGroups: [kopf.dev]
  resources: [{{ $resource }}]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [{{ $resource }}]
  resourceNames: [{{ include "moedeploy.peeringName" . | quote }}]
  verbs: [patch]
{{- end }}
