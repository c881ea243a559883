{{- define "asyncmtl.name" -}}asyncmtl-operator{{- end -}}

{{- define "asyncmtl.fullname" -}}
{{- if contains "asyncmtl" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-asyncmtl" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "asyncmtl.labels" -}}
app.kubernetes.io/name: {{ include "asyncmtl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: asyncmtl
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "asyncmtl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "asyncmtl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "asyncmtl.serviceAccountName" -}}
{{- default (include "asyncmtl.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "asyncmtl.operatorImage" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{- define "asyncmtl.trainerImage" -}}
{{ .Values.trainer.image.repository }}:{{ default .Chart.AppVersion .Values.trainer.image.tag }}
{{- end -}}

{{/* "true" when a monitoring object is on: true, or auto and the prometheus-operator API exists */}}
{{- define "asyncmtl.monitoringOn" -}}
{{- if eq (toString .value) "auto" -}}
{{- if (.ctx.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true{{- end -}}
{{- else if eq (toString .value) "true" -}}true{{- end -}}
{{- end -}}

{{/* The Pod Security "restricted" profile, for the operator (children.py sets the same on every Job it creates) */}}
{{- define "asyncmtl.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "asyncmtl.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The operator's permissions (exactly what its code calls; tests/unit/test_rbac.py checks this) */}}
{{- define "asyncmtl.rules" -}}
- apiGroups: ["asyncmtl.dev"]
  resources: ["asyncmtlruns"]
  verbs: ["get", "list", "patch", "watch"]
- apiGroups: ["asyncmtl.dev"]
  resources: ["asyncmtlruns/status"]
  verbs: ["get", "patch"]
- apiGroups: ["asyncmtl.dev"]
  resources: ["asyncmtlruns/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "get"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "delete", "get", "list", "watch"]
{{- if .Values.peering.enabled }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings", "clusterkopfpeerings"]
  verbs: ["get", "list", "patch", "watch"]
{{- end }}
{{- end -}}
