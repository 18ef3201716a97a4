variable "name" {
  description = "Repository name."
  type        = string
}

variable "kms_key_arn" {
  description = "Key that encrypts the images."
  type        = string
}

variable "images_to_keep" {
  description = "Newest images kept; older ones expire."
  type        = number
}

variable "force_delete" {
  description = "Allow deleting the repository while it holds images."
  type        = bool
  default     = false
}

variable "model_tag_prefix" {
  description = "Tag prefix the deploy task gives the image of each kept model version (hosting.aws MODEL_IMAGE_TAG_PREFIX)."
  type        = string
  default     = "model-"
}
