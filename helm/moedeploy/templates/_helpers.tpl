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

{{/* "true" when the operator serves every namespace (no watchNamespaces list), "" otherwise. */}}
{{- define "moedeploy.clusterWide" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/* Rules across values that values.schema.json cannot explain well; the Deployment includes this. */}}
{{- define "moedeploy.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail (printf "replicaCount is %d but operator.leaderElection.enabled is false: several operators without leader election would all reconcile the same ModelDeployments; enable it or set replicaCount=1" (int .Values.replicaCount)) }}
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
{{- if .Values.operator.prometheus.bearerTokenSecret.name }}
- --prometheus-bearer-token-file=/etc/moe-operator/prometheus-token/{{ .Values.operator.prometheus.bearerTokenSecret.key }}
{{- end }}
{{- if .Values.operator.prometheus.caConfigMap.name }}
- --prometheus-ca-file=/etc/moe-operator/prometheus-ca/{{ .Values.operator.prometheus.caConfigMap.key }}
{{- end }}
{{- if .Values.operator.prometheus.insecureSkipVerify }}
- --prometheus-insecure-skip-verify
{{- end }}
- --policy-file=/etc/moe-operator/policy/policy.yaml
- --engine-image=moe-runtime={{ .Values.engines.moeRuntime.image | default (printf "ghcr.io/moedeploy/runtime:%s" .Chart.AppVersion) }}
- --engine-image=vllm={{ .Values.engines.vllm.image }}
- --engine-image=sglang={{ .Values.engines.sglang.image }}
- --workers={{ .Values.operator.workers }}
- --metrics-port={{ .Values.operator.metricsPort }}
{{- if .Values.operator.leaderElection.enabled }}
- --leader-elect
- --leader-election-id={{ include "moedeploy.fullname" . }}
{{- end }}
- --liveness=http://0.0.0.0:{{ include "moedeploy.healthPort" . }}/healthz
{{- if eq .Values.operator.logLevel "debug" }}
- --verbose
{{- end }}
{{- end }}

{{- define "moedeploy.healthPort" -}}8080{{- end }}

{{/* RBAC rules ---------------------------------------------------------------------------------------
Exactly moe_operator.io.kube.PERMISSIONS (tests/integration/test_helm_chart.py compares them): the calls of
the reconciler and of kopf's watches (kopf runs with resource scanning disabled, so it needs no access to CRDs
or Namespaces). No wildcards, no Secrets, no pod creation. */}}

{{- define "moedeploy.rbacSubjects" -}}
- kind: ServiceAccount
  name: {{ include "moedeploy.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/* Namespaced resources the operator reads and writes: granted cluster-wide or per watched namespace. */}}
{{- define "moedeploy.rules.workload" -}}
- apiGroups: [moedeploy.dev]
  resources: [modeldeployments]
  verbs: [get, list, watch]
# the whole status is written in one update, conditioned on the resourceVersion the operator read
- apiGroups: [moedeploy.dev]
  resources: [modeldeployments/status]
  verbs: [update]
# children carry ownerReferences with blockOwnerDeletion, which needs update on the owner's finalizers
- apiGroups: [moedeploy.dev]
  resources: [modeldeployments/finalizers]
  verbs: [update]
# the stable and the canary Deployment; a finished or rejected canary is deleted
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
# one immutable ConfigMap per revision, pruned past the history limit
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
# the Service clients use; with spec.routing also one headless Service per track, deleted without it
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# spec.routing: each router's own ServiceAccount, Role and RoleBinding
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, delete]
# not read by the operator: RBAC lets it grant the routers' Role only what it holds itself
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
# read only: readiness, and why a pod cannot start (image pulls, scheduling, crash loops)
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
# a PodDisruptionBudget per track of several pods, so that a drain never evicts them all at once
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
{{- end }}
