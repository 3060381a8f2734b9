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

{{- define "kvmount.providerImage" -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.provider.repository (include "kvmount.tag" .) -}}
{{- end -}}

{{- define "kvmount.sidecarImage" -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.sidecar.repository (include "kvmount.tag" .) -}}
{{- end -}}

{{- define "kvmount.nodeName" -}}{{ include "kvmount.fullname" . }}-node{{- end -}}
{{- define "kvmount.webhookName" -}}{{ include "kvmount.fullname" . }}-webhook{{- end -}}

{{/* Checks of values combinations that cannot work. */}}
{{- define "kvmount.validate" -}}
{{- if not (has .Values.mode (list "provider" "standalone")) -}}
{{- fail (printf "mode: %q; accepted: provider, standalone" .Values.mode) -}}
{{- end -}}
{{- if not (regexMatch "^[a-zA-Z0-9_-]{1,30}$" .Values.provider.socketName) -}}
{{- fail (printf "provider.socketName: %q; accepted: 1 to 30 letters, digits, '_' or '-' (the SecretProviderClass spec.provider)" .Values.provider.socketName) -}}
{{- end -}}
{{- if not (has .Values.provider.logFormat (list "text" "json")) -}}
{{- fail (printf "provider.logFormat: %q; accepted: text, json" .Values.provider.logFormat) -}}
{{- end -}}
{{- if not (has .Values.webhook.failurePolicy (list "Ignore" "Fail")) -}}
{{- fail (printf "webhook.failurePolicy: %q; accepted: Ignore, Fail" .Values.webhook.failurePolicy) -}}
{{- end -}}
{{- if not (has .Values.webhook.tls.mode (list "certManager" "helm" "secret")) -}}
{{- fail (printf "webhook.tls.mode: %q; accepted: certManager, helm, secret" .Values.webhook.tls.mode) -}}
{{- end -}}
{{- if and .Values.webhook.enabled (eq .Values.webhook.tls.mode "secret") (or (not .Values.webhook.tls.secretName) (not .Values.webhook.tls.caBundle)) -}}
{{- fail "webhook.tls.mode secret needs webhook.tls.secretName and webhook.tls.caBundle" -}}
{{- end -}}
{{- if not (has (toString .Values.standalone.installCRD) (list "auto" "true" "false")) -}}
{{- fail (printf "standalone.installCRD: %v; accepted: auto, true, false" .Values.standalone.installCRD) -}}
{{- end -}}
{{- end -}}
