{{/* Names and labels. */}}
{{- define "kvmount.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kvmount.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kvmount.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kvmount.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvmount
{{- end -}}

{{- define "kvmount.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvmount.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kvmount.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest} (and a registry prefix when given):
repository:tag, or repository@digest when a digest pins it (the tag is then only a label). */}}
{{- define "kvmount.imageRef" -}}
{{- $repo := .repository -}}
{{- if .registry }}{{ $repo = printf "%s/%s" .registry .repository }}{{ end -}}
{{- if .digest -}}
{{- printf "%s@%s" $repo .digest -}}
{{- else -}}
{{- printf "%s:%s" $repo .tag -}}
{{- end -}}
{{- end -}}

{{- define "kvmount.providerImage" -}}
{{- $i := .Values.image.provider -}}
{{- include "kvmount.imageRef" (dict "registry" .Values.image.registry "repository" $i.repository "tag" (default (include "kvmount.tag" .) $i.tag) "digest" $i.digest) -}}
{{- end -}}

{{- define "kvmount.sidecarImage" -}}
{{- $i := .Values.image.sidecar -}}
{{- include "kvmount.imageRef" (dict "registry" .Values.image.registry "repository" $i.repository "tag" (default (include "kvmount.tag" .) $i.tag) "digest" $i.digest) -}}
{{- end -}}

{{- define "kvmount.nodeName" -}}{{ include "kvmount.fullname" . }}-node{{- end -}}
{{- define "kvmount.webhookName" -}}{{ include "kvmount.fullname" . }}-webhook{{- end -}}

{{/* Checks of values combinations that cannot work. Each value on its own (modes, names,
durations, log levels, quantities) is checked by values.schema.json before any template. */}}
{{- define "kvmount.validate" -}}
{{- if and .Values.webhook.enabled (eq .Values.webhook.tls.mode "secret") (or (not .Values.webhook.tls.secretName) (not .Values.webhook.tls.caBundle)) -}}
{{- fail "webhook.tls.mode secret needs webhook.tls.secretName and webhook.tls.caBundle" -}}
{{- end -}}
{{- end -}}
