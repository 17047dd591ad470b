{{/*
Names. Kubernetes object names (and label values) are limited to 63 characters (DNS-1123
labels), so every generated name is cut to 63 and stripped of a trailing "-" that the cut
may leave. The fullname leaves room for nothing: suffixes below cut again after appending.
*/}}
{{- define "loraf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or just the release when it already contains the chart name. */}}
{{- define "loraf.fullname" -}}
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

{{/* "<fullname>-<suffix>", cut to 63 characters (the suffix may push it over). */}}
{{- define "loraf.suffixed" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "loraf.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The chart label value is limited to 63 characters too; "+" is not allowed in it. */}}
{{- define "loraf.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loraf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loraf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "loraf.labels" -}}
helm.sh/chart: {{ include "loraf.chart" . }}
{{ include "loraf.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loraf
{{- end }}

{{- define "loraf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "loraf.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "loraf.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "loraf.peeringName" -}}
{{- default (include "loraf.fullname" .) .Values.leaderElection.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The operator's rules, generated from operator/loraf_operator/rbac_rules.py. */}}
{{- define "loraf.rbacRules" -}}
{{- $sets := .root.Files.Get "files/rbac.yaml" | fromYaml }}
{{- toYaml (index $sets .set) }}
{{- end }}

{{/*
Fail early on combinations that cannot work: a Role needs an exact namespace name, and
several replicas without peering would all act at once.
*/}}
{{- define "loraf.validate" -}}
{{- if .Values.rbac.namespaced }}
{{- if not .Values.operator.namespaces }}
{{- fail "rbac.namespaced needs operator.namespaces: the namespaces to create a Role in" }}
{{- end }}
{{- range .Values.operator.namespaces }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .) }}
{{- fail (printf "rbac.namespaced needs exact namespace names, got %q" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled (otherwise every replica acts)" }}
{{- end }}
{{- end }}
