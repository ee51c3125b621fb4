{{/* Names, labels and values shared by the templates. */}}

{{- define "lanyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lanyard.fullname" -}}
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

{{- define "lanyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lanyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lanyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lanyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lanyard
{{- end -}}

{{- define "lanyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lanyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository@digest, or repository:tag (tag default: appVersion). Argument: (list image $) */}}
{{- define "lanyard.imageRef" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "lanyard.serviceHost" -}}
{{- printf "%s.%s.svc" (include "lanyard.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "lanyard.publicUrl" -}}
{{- default (printf "https://%s:%d" (include "lanyard.serviceHost" .) (int .Values.service.port)) .Values.publicUrl -}}
{{- end -}}

{{/* The Secret with tls.crt, tls.key and ca.crt: the given one, else FULLNAME-tls (made by
cert-manager when it is on, by you otherwise). */}}
{{- define "lanyard.tlsSecretName" -}}
{{- if and .Values.tls.existingSecret (not .Values.tls.certManager.enabled) -}}
{{- .Values.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "lanyard.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "lanyard.postgresSecretName" -}}
{{- default (printf "%s-postgres" (include "lanyard.fullname" .)) .Values.store.postgres.existingSecret -}}
{{- end -}}

{{/* Namespaces the webhooks never see: the release's own (the broker cannot admit or
inject itself), kube-system, and the listed ones. */}}
{{- define "lanyard.webhookNamespaceSelector" -}}
{{- $excluded := concat (list .Release.Namespace "kube-system") .Values.webhooks.excludeNamespaces | uniq -}}
{{- $sel := deepCopy .Values.webhooks.namespaceSelector -}}
{{- $exprs := concat (list (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" $excluded)) (default (list) $sel.matchExpressions) -}}
{{- $_ := set $sel "matchExpressions" $exprs -}}
{{- toYaml $sel -}}
{{- end -}}

{{- define "lanyard.clientConfig" -}}
{{- $root := index . 0 -}}
{{- $path := index . 1 -}}
clientConfig:
  service:
    name: {{ include "lanyard.fullname" $root }}
    namespace: {{ $root.Release.Namespace }}
    path: {{ $path }}
    port: {{ $root.Values.service.port }}
  {{- if not $root.Values.tls.certManager.enabled }}
  caBundle: {{ required "tls.caBundle (the base64 PEM CA of tls.existingSecret) is required for the webhooks" $root.Values.tls.caBundle }}
  {{- end }}
{{- end -}}
